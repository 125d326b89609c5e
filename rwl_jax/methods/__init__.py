"""The SSL methods, one registry entry each: heads, target network, config section, validation, loss.

An entry (`MethodSpec`) states everything that differs between methods; the train step
(rwl_jax.run.step) does the rest:

  predictor     the online network has a prediction head q (dims: config.model.predictor_dims),
                p = q(z), as in BYOL and SimSiam;
  ema_target    a target network, an exponential moving average (EMA) of the online network's
                parameters, gives the targets (BYOL); it is never differentiated;
  section       the config section holding the method's hyper-parameters (None: only top-level
                fields such as `temperature`);
  validate      validate(config) raises ConfigError with one line on a bad hyper-parameter;
  build_loss    build_loss(config, mesh) -> loss(online, targets, key) -> (loss, aux), where
                online = Outputs(z1, z2, p1, p2) holds the online projections z and predictions p
                (None without a predictor) of the two views, [B, d] each, targets = (t1, t2) the
                target projections (the EMA network's with ema_target, otherwise the online z1, z2
                themselves: SimSiam's losses stop their gradient inside), key the step's 'method'
                stream (rwl_jax.rng), and aux a dict of float32 scalars the step logs (VICReg's
                three terms, Barlow Twins' two parts, GSG's swap rate).

EMA target (BYOL, Grill et al. 2020): after the optimiser step k (0-based) of K, with the UPDATED
online parameters theta_{k+1},

    xi_{k+1} = m(k) xi_k + (1 - m(k)) theta_{k+1},   m(k) = 1 - (1 - m0) (cos(pi k / K) + 1) / 2,

so m rises from m0 to 1 over the run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from rwl_jax import losses
from rwl_jax.errors import ConfigError


class Outputs(NamedTuple):
  """The online branch's outputs for the two views: projections z, predictions p (or None)."""

  z1: jax.Array
  z2: jax.Array
  p1: jax.Array | None = None
  p2: jax.Array | None = None


Targets = tuple[jax.Array, jax.Array]
Aux = dict[str, jax.Array]
MethodLoss = Callable[[Outputs, Targets, jax.Array], tuple[jax.Array, Aux]]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One registry entry: what a method is, before a config binds its hyper-parameters."""

  name: str
  build_loss: Callable[[ml_collections.ConfigDict, Mesh | None], MethodLoss]
  predictor: bool = False
  ema_target: bool = False
  section: str | None = None
  validate: Callable[[ml_collections.ConfigDict], None] = lambda config: None


@dataclasses.dataclass(frozen=True)
class Method:
  """A method with its config's hyper-parameters bound: what the train step calls."""

  name: str
  loss: MethodLoss
  predictor: bool = False
  ema_target: bool = False
  base_momentum: float = 0.0  # m0 of the EMA schedule; used only with ema_target


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
  if spec.name in REGISTRY:
    raise ValueError(f"method {spec.name!r} is registered twice")
  REGISTRY[spec.name] = spec
  return spec


def ema_momentum(step: jax.Array, total_steps: int, base_momentum: float) -> jax.Array:
  """m(k) = 1 - (1 - m0) (cos(pi k / K) + 1) / 2: m0 at k = 0, 1 at k = K (BYOL's schedule)."""
  progress = jnp.asarray(step, jnp.float32) / max(int(total_steps), 1)
  return 1.0 - (1.0 - base_momentum) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema_update(target: Any, online: Any, momentum: jax.Array) -> Any:
  """momentum * target + (1 - momentum) * online, leaf by leaf (pytrees of the same structure)."""
  return jax.tree.map(lambda t, o: momentum * t + (1.0 - momentum) * o, target, online)


def gsg_pairing(key: jax.Array, t1: jax.Array, t2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """GSG's random pairing and its sources: (perm, gsg_assignment(t1, t2, t1[perm], t2[perm])).

  Image i (A) is paired with image perm[i] (B), perm a uniform random permutation of the batch as
  torch.randperm in the official code (so B can be A). t1, t2 are the UNNORMALISED target
  projections of the two views; B's are rows of the same arrays, so no extra forward pass.
  """
  perm = jax.random.permutation(key, t1.shape[0])
  return perm, losses.gsg_assignment(t1, t2, t1[perm], t2[perm])


# --- validation helpers ----------------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _finite(value: Any) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def _check_temperature(config) -> None:
  _require(_finite(config.temperature) and config.temperature > 0,
           f"temperature must be > 0, got {config.temperature}")


def _check_predictor(config) -> None:
  dims = list(config.model.predictor_dims)
  _require(bool(dims) and all(isinstance(d, int) and d >= 1 for d in dims),
           f"model.predictor_dims must be a non-empty list of positive sizes, got {dims}")
  # p and z are compared row by row, so the predictor maps back to the projection size.
  _require(dims[-1] == config.model.projector_dims[-1],
           f"model.predictor_dims must end with the projection size "
           f"{config.model.projector_dims[-1]}, got {dims}")


def _check_byol(config) -> None:
  _check_predictor(config)
  m0 = config.ema.base_momentum
  _require(_finite(m0) and 0 <= m0 <= 1, f"ema.base_momentum must be in [0, 1], got {m0}")


def _check_vicreg(config) -> None:
  for name in ("sim_coeff", "std_coeff", "cov_coeff", "gamma"):
    value = config.vicreg[name]
    _require(_finite(value) and value >= 0, f"vicreg.{name} must be >= 0, got {value}")
  _require(_finite(config.vicreg.epsilon) and config.vicreg.epsilon > 0,
           f"vicreg.epsilon must be > 0, got {config.vicreg.epsilon}")


def _check_barlow(config) -> None:
  _require(_finite(config.barlow.lambd) and config.barlow.lambd >= 0,
           f"barlow.lambd must be >= 0, got {config.barlow.lambd}")
  for name in ("scale", "epsilon"):
    value = config.barlow[name]
    _require(_finite(value) and value > 0, f"barlow.{name} must be > 0, got {value}")


# --- losses ----------------------------------------------------------------------------------

# The contrastive methods' losses: (whole-matrix loss, builder of its row-sharded version).
CONTRASTIVE_LOSSES = {"rwl": (losses.rwl_loss, losses.sharded_rwl_loss),
                      "simclr": (losses.nt_xent_loss, losses.sharded_nt_xent_loss)}


def _contrastive_loss(config, mesh: Mesh | None) -> MethodLoss:
  """RWL or NT-Xent; row-sharded over the mesh's data axis when it has several devices (the
  other losses reduce over the batch with means and d x d matrices, which jit partitions well)."""
  temperature = float(config.temperature)
  whole, build_sharded = CONTRASTIVE_LOSSES[config.method]
  loss = (build_sharded(mesh, mesh.axis_names[0]) if mesh is not None and mesh.devices.size > 1
          else whole)
  return lambda online, targets, key: (loss(online.z1, online.z2, temperature), {})


def _predictive_loss(loss: Callable[..., jax.Array]) -> Callable[..., MethodLoss]:
  """loss(p1, p2, t1, t2) of the predictor methods; stop_gradient on t is inside `loss`."""
  return lambda config, mesh: (
      lambda online, targets, key: (loss(online.p1, online.p2, *targets), {}))


def _gsg_loss(config, mesh) -> MethodLoss:
  """-1/2 mean_r [cos(p(a_i*), sg(a_{3-i*})) + cos(p(b_j*), sg(b_{3-j*}))] (losses/gsg.py).

  aux: gsg_swap_rate, the fraction of images whose source view (the one predicted) is the second
  view rather than the first: 0.5 when the pairing has no preference.
  """

  def loss(online: Outputs, targets: Targets, key: jax.Array):
    t1, t2 = targets
    perm, assignment = gsg_pairing(key, t1, t2)
    p_a = jnp.stack([online.p1, online.p2])  # [2, B, d]
    z_a = jnp.stack([t1, t2])
    p_src_a, _, p_src_b, _ = losses.gsg_select(p_a, p_a[:, perm], assignment)
    _, z_tgt_a, _, z_tgt_b = losses.gsg_select(z_a, z_a[:, perm], assignment)
    value = (0.5 * losses.negative_cosine(p_src_a, z_tgt_a)
             + 0.5 * losses.negative_cosine(p_src_b, z_tgt_b))
    return value, {"gsg_swap_rate": jnp.mean(assignment.astype(jnp.float32))}

  return loss


def _vicreg_loss(config, mesh) -> MethodLoss:
  v = config.vicreg
  coefficients = {"invariance": float(v.sim_coeff), "variance": float(v.std_coeff),
                  "covariance": float(v.cov_coeff)}
  gamma, epsilon = float(v.gamma), float(v.epsilon)

  def loss(online: Outputs, targets: Targets, key: jax.Array):
    terms = losses.vicreg_terms(online.z1, online.z2, gamma=gamma, epsilon=epsilon)
    value = sum(coefficients[name] * terms[name] for name in coefficients)
    return value, {f"vicreg_{name}": terms[name] for name in coefficients}

  return loss


def _barlow_loss(config, mesh) -> MethodLoss:
  b = config.barlow
  lambd, scale, epsilon = float(b.lambd), float(b.scale), float(b.epsilon)

  def loss(online: Outputs, targets: Targets, key: jax.Array):
    terms = losses.barlow_twins_terms(online.z1, online.z2, epsilon=epsilon)
    value = scale * (terms["on_diagonal"] + lambd * terms["off_diagonal"])
    return value, {f"barlow_{name}": terms[name] for name in terms}

  return loss


register(MethodSpec("rwl", _contrastive_loss, validate=_check_temperature))
register(MethodSpec("simclr", _contrastive_loss, validate=_check_temperature))
register(MethodSpec("byol", _predictive_loss(losses.byol_loss), predictor=True, ema_target=True,
                    section="ema", validate=_check_byol))
register(MethodSpec("byol_gsg", _gsg_loss, predictor=True, ema_target=True, section="ema",
                    validate=_check_byol))
register(MethodSpec("simsiam", _predictive_loss(losses.simsiam_loss), predictor=True,
                    validate=_check_predictor))
register(MethodSpec("simsiam_gsg", _gsg_loss, predictor=True, validate=_check_predictor))
register(MethodSpec("vicreg", _vicreg_loss, section="vicreg", validate=_check_vicreg))
register(MethodSpec("barlow", _barlow_loss, section="barlow", validate=_check_barlow))

METHODS = tuple(sorted(REGISTRY))


def spec(name: str) -> MethodSpec:
  _require(name in REGISTRY, f"unknown method {name!r}; choose one of {list(METHODS)}")
  return REGISTRY[name]


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line) on an unknown method or an invalid hyper-parameter of it."""
  spec(config.method).validate(config)


def get(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Method:
  """The config's method, with its hyper-parameters bound.

  mesh: the mesh the train step is jitted over (batch on its first axis); with more than one
  device, RWL and NT-Xent compute each device's rows of the similarity only (losses.sharded).
  """
  entry = spec(config.method)
  entry.validate(config)
  base_momentum = float(config.ema.base_momentum) if entry.ema_target else 0.0
  return Method(entry.name, entry.build_loss(config, mesh), predictor=entry.predictor,
                ema_target=entry.ema_target, base_momentum=base_momentum)
