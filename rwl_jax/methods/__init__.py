"""What differs between SSL methods: heads, target network, and the loss of the branches' outputs.

A Method states three things, and the train step (rwl_jax.train.make_train_step) does the rest:

  predictor   the online network has a prediction head q (dims: config.model.predictor_dims),
              p = q(z), as in BYOL and SimSiam;
  ema_target  a target network, an exponential moving average (EMA) of the online network's
              parameters, gives the targets (BYOL); it is never differentiated;
  loss        loss(online, targets, key) -> float32 scalar, where online = Outputs(z1, z2, p1, p2)
              holds the online projections z and predictions p (None without a predictor) of the
              two views, [B, d] each, targets = (t1, t2) the target projections (the EMA network's
              with ema_target, otherwise the online z1, z2 themselves: SimSiam's losses stop their
              gradient inside), and key a PRNG key that is a pure function of (seed, step) (only
              the GSG methods draw from it).

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
MethodLoss = Callable[[Outputs, Targets, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Method:
  """One SSL method: its heads, its target network and its loss (hyper-parameters bound)."""

  name: str
  loss: MethodLoss
  predictor: bool = False
  ema_target: bool = False
  base_momentum: float = 0.0  # m0 of the EMA schedule; used only with ema_target


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The step's PRNG key, fold_in(key(seed), step): a pure function of both, so resume is exact."""
  return jax.random.fold_in(jax.random.key(seed), step)


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


def _gsg_loss(online: Outputs, targets: Targets, key: jax.Array) -> jax.Array:
  """-1/2 mean_r [cos(p(a_i*), sg(a_{3-i*})) + cos(p(b_j*), sg(b_{3-j*}))] (losses/gsg.py)."""
  t1, t2 = targets
  perm, assignment = gsg_pairing(key, t1, t2)
  p_a = jnp.stack([online.p1, online.p2])  # [2, B, d]
  z_a = jnp.stack([t1, t2])
  p_src_a, _, p_src_b, _ = losses.gsg_select(p_a, p_a[:, perm], assignment)
  _, z_tgt_a, _, z_tgt_b = losses.gsg_select(z_a, z_a[:, perm], assignment)
  return (0.5 * losses.negative_cosine(p_src_a, z_tgt_a)
          + 0.5 * losses.negative_cosine(p_src_b, z_tgt_b))


def _predictive(loss: Callable[..., jax.Array]) -> MethodLoss:
  """loss(p1, p2, t1, t2) of the predictor methods; stop_gradient on t is inside `loss`."""
  return lambda online, targets, key: loss(online.p1, online.p2, *targets)


# The contrastive methods' losses: (whole-matrix loss, builder of its row-sharded version).
CONTRASTIVE_LOSSES = {"rwl": (losses.rwl_loss, losses.sharded_rwl_loss),
                      "simclr": (losses.nt_xent_loss, losses.sharded_nt_xent_loss)}


def _contrastive(config: ml_collections.ConfigDict, mesh: Mesh | None) -> Method:
  """RWL or NT-Xent; row-sharded over the mesh's data axis when it has several devices."""
  temperature = float(config.temperature)
  whole, build_sharded = CONTRASTIVE_LOSSES[config.method]
  loss = (build_sharded(mesh, mesh.axis_names[0]) if mesh is not None and mesh.devices.size > 1
          else whole)
  return Method(config.method, lambda online, targets, key: loss(online.z1, online.z2, temperature))


def _byol(config, loss: MethodLoss) -> Method:
  return Method(config.method, loss, predictor=True, ema_target=True,
                base_momentum=float(config.ema.base_momentum))


def _vicreg(config) -> Method:
  v = config.vicreg
  kwargs = dict(sim_coeff=float(v.sim_coeff), std_coeff=float(v.std_coeff),
                cov_coeff=float(v.cov_coeff), gamma=float(v.gamma), epsilon=float(v.epsilon))
  return Method("vicreg", lambda online, targets, key: losses.vicreg_loss(online.z1, online.z2,
                                                                          **kwargs))


def _barlow(config) -> Method:
  b = config.barlow
  lambd, scale, epsilon = float(b.lambd), float(b.scale), float(b.epsilon)
  return Method("barlow", lambda online, targets, key: scale * losses.barlow_twins_loss(
      online.z1, online.z2, lambd=lambd, epsilon=epsilon))


# Each builder takes (config, mesh); only the contrastive losses use the mesh (row sharding).
# The others reduce over the batch with means and d x d matrices, which jit partitions well.
_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, Mesh | None], Method]] = {
    "rwl": _contrastive,
    "simclr": _contrastive,
    "byol": lambda c, mesh: _byol(c, _predictive(losses.byol_loss)),
    "byol_gsg": lambda c, mesh: _byol(c, _gsg_loss),
    "simsiam": lambda c, mesh: Method("simsiam", _predictive(losses.simsiam_loss), predictor=True),
    "simsiam_gsg": lambda c, mesh: Method("simsiam_gsg", _gsg_loss, predictor=True),
    "vicreg": lambda c, mesh: _vicreg(c),
    "barlow": lambda c, mesh: _barlow(c),
}

METHODS = tuple(sorted(_BUILDERS))
_PREDICTIVE = ("byol", "byol_gsg", "simsiam", "simsiam_gsg")


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _finite(value: Any) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def check_method_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line) on an unknown method or an invalid hyper-parameter of it."""
  method = config.method
  _require(method in _BUILDERS, f"unknown method {method!r}; choose one of {list(METHODS)}")
  if method in CONTRASTIVE_LOSSES:
    _require(config.temperature > 0, f"temperature must be > 0, got {config.temperature}")
  if method in _PREDICTIVE:
    dims = list(config.model.predictor_dims)
    _require(bool(dims) and all(isinstance(d, int) and d >= 1 for d in dims),
             f"model.predictor_dims must be a non-empty list of positive sizes, got {dims}")
    # p and z are compared row by row, so the predictor maps back to the projection size.
    _require(dims[-1] == config.model.projector_dims[-1],
             f"model.predictor_dims must end with the projection size "
             f"{config.model.projector_dims[-1]}, got {dims}")
  if method in ("byol", "byol_gsg"):
    m0 = config.ema.base_momentum
    _require(_finite(m0) and 0 <= m0 <= 1, f"ema.base_momentum must be in [0, 1], got {m0}")
  if method == "vicreg":
    for name in ("sim_coeff", "std_coeff", "cov_coeff", "gamma"):
      value = config.vicreg[name]
      _require(_finite(value) and value >= 0, f"vicreg.{name} must be >= 0, got {value}")
    _require(_finite(config.vicreg.epsilon) and config.vicreg.epsilon > 0,
             f"vicreg.epsilon must be > 0, got {config.vicreg.epsilon}")
  if method == "barlow":
    _require(_finite(config.barlow.lambd) and config.barlow.lambd >= 0,
             f"barlow.lambd must be >= 0, got {config.barlow.lambd}")
    for name in ("scale", "epsilon"):
      value = config.barlow[name]
      _require(_finite(value) and value > 0, f"barlow.{name} must be > 0, got {value}")


def get(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> Method:
  """The config's method, with its hyper-parameters bound.

  mesh: the mesh the train step is jitted over (batch on its first axis); with more than one
  device, RWL and NT-Xent compute each device's rows of the similarity only (losses.sharded).
  """
  check_method_config(config)
  return _BUILDERS[config.method](config, mesh)
