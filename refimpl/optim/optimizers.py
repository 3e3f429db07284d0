"""Reference optimizers: PyTorch's SGD, Adam and AdamW, update formula by update formula.

Each optimizer follows the pseudo-code of its PyTorch documentation page (``torch.optim.SGD``,
``torch.optim.Adam``, ``torch.optim.AdamW``) and the single-tensor code path that implements
it (``_single_tensor_sgd`` and ``_single_tensor_adam`` in ``torch/optim/sgd.py`` and
``adam.py``; ``AdamW`` is ``Adam`` with ``decoupled_weight_decay=True``), in float64, one line
per term. Notation of those pages: ``theta`` a parameter, ``g`` its gradient, ``gamma`` the
learning rate ``lr``, ``lambda`` the weight decay, ``t`` the step count of the parameter (1 at
its first step). Every formula acts elementwise on one parameter of any shape.

State is kept per **unique** parameter, in PyTorch's names (``optimizer.state_dict()["state"]``
holds the same entries per parameter): ``state[name] = {"momentum_buffer": b}`` for SGD with
momentum, ``{"step": t, "exp_avg": m, "exp_avg_sq": v}`` (and ``"max_exp_avg_sq"`` with
``amsgrad``) for Adam and AdamW. A shared parameter is one key of ``params``, so it has one
state; a step returns new parameters and a new state and never writes into its inputs.

Options beyond PyTorch's change exactly one rule each, so that another framework's convention
can be expressed (their defaults are PyTorch's): ``Adam(decoupled_weight_decay=True)`` is
AdamW; ``eps_root`` puts an epsilon inside the square root as optax does
(``sqrt(v_hat + eps_root) + eps``); ``bias_correction=False`` drops Adam's ``1 - beta^t``
factors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .._validate import (
    check_finite_result,
    check_int,
    check_keys,
    check_real,
    check_shape,
    no_fp_warnings,
)
from ._params import Params, check_grads, check_params

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZERS", "optimizer_from_config", "State"]

#: ``{parameter name: {state entry: value}}``, keyed exactly like the parameters.
State = dict[str, dict[str, Any]]


def _check_lr(lr: Any) -> float:
    lr = check_real(lr, "lr", minimum=0)
    if lr == 0:
        raise ValueError("lr: expected a number > 0 (a step of size 0 changes nothing), got 0.0")
    return lr


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


class Optimizer:
    """What every reference optimizer shares: the checks, one update per unique parameter, the
    configuration as data.

    A subclass defines :meth:`update_parameter` (the formulas for one parameter), the state
    entries it keeps (:attr:`state_entries`), :meth:`config` and its ``name``.
    """

    #: The name in :meth:`config` and :data:`OPTIMIZERS`.
    name: ClassVar[str] = ""

    def state_entries(self) -> tuple[str, ...]:
        """The entries of ``state[name]`` after a step (PyTorch's names)."""
        raise NotImplementedError

    def update_parameter(self, param: np.ndarray, grad: np.ndarray, state: Mapping[str, Any]
                         ) -> tuple[np.ndarray, dict[str, Any]]:
        """One step of one parameter: ``(new_param, new_state)``, new arrays.

        Parameters
        ----------
        param, grad : ndarray
            The parameter and its gradient, float64, of one shape.
        state : dict
            Its state after the previous step, or ``{}`` before its first step.
        """
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able ``{"name": ..., <every hyper-parameter>: ...}``; see
        :func:`optimizer_from_config`."""
        raise NotImplementedError

    def step(self, params: Mapping[str, Any], grads: Mapping[str, Any],
             state: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Params, State]:
        """One update of every unique parameter, exactly once.

        Parameters
        ----------
        params : dict of str to ndarray
            The unique parameters (real, finite; no two keys holding one array).
        grads : dict of str to ndarray
            Exactly the keys and shapes of ``params``.
        state : dict, optional
            The state returned by the previous step (keyed like ``params``), or None at the
            start (every parameter fresh).

        Returns
        -------
        new_params : dict of str to ndarray
            New arrays, keyed and ordered like ``params``.
        new_state : dict of str to dict
            New entries per parameter (:attr:`state_entries`); the inputs are not modified.

        Raises
        ------
        TypeError, ValueError
            Naming the argument and key: keys that differ, a shape, a NaN, a complex array,
            two keys holding one array, a state that is not the previous step's.
        FloatingPointError
            Naming the parameter, if the update overflowed.
        """
        checked = check_params(params)
        checked_grads = check_grads(grads, checked)
        entries = self._check_state(state, checked)
        new_params: Params = {}
        new_state: State = {}
        with no_fp_warnings():
            for key, value in checked.items():
                new_params[key], new_state[key] = self.update_parameter(
                    value, checked_grads[key], entries[key])
                check_finite_result(new_params[key], lambda k=key: (
                    f"{type(self).__name__} step: the new value of {k!r}"))
        return new_params, new_state

    def _check_state(self, state: Any, params: Params) -> dict[str, dict[str, Any]]:
        """Every parameter's state entries (``{}`` when fresh), checked against its shape."""
        if state is None:
            return {key: {} for key in params}
        if not isinstance(state, Mapping):
            raise TypeError(f"state: expected None or the state returned by the previous "
                            f"step, got {type(state).__name__}")
        check_keys(state, list(params), what="state (keyed exactly like params: one entry per "
                                             "unique parameter)")
        allowed = self.state_entries()
        checked = {}
        for key, value in params.items():
            entry = state[key]
            where = f"state[{key!r}]"
            if not isinstance(entry, Mapping):
                raise TypeError(f"{where}: expected a dict of {list(allowed)}, got "
                                f"{type(entry).__name__}")
            check_keys(entry, [], allowed, what=where)
            arrays = {}
            for name, item in entry.items():
                if name == "step":
                    arrays[name] = check_int(item, f"{where}['step']", 1)
                else:
                    array = np.asarray(item)
                    if array.dtype != np.float64:
                        raise TypeError(f"{where}[{name!r}]: expected a float64 array, got "
                                        f"dtype {array.dtype}")
                    check_shape(array, value.shape, f"{where}[{name!r}]")
                    arrays[name] = array
            checked[key] = self._complete_entry(arrays, where)
        return checked

    def _complete_entry(self, entry: dict[str, Any], where: str) -> dict[str, Any]:
        """A subclass's check that an entry is fresh (``{}``) or complete."""
        return entry

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config() == self.config()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        config = self.config()
        del config["name"]
        shown = {key: tuple(value) if isinstance(value, list) else value   # betas
                 for key, value in config.items()}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay:
    ``torch.optim.SGD`` to the letter.

    PyTorch's pseudo-code, for each parameter at its step ``t``::

        g_t <- g_t + lambda theta_{t-1}                 if lambda != 0
        if mu != 0:
            b_t <- g_t                                  if t == 1 (no dampening at t = 1)
            b_t <- mu b_{t-1} + (1 - tau) g_t           if t > 1
            g_t <- g_t + mu b_t                         if nesterov
            g_t <- b_t                                  otherwise
        theta_t <- theta_{t-1} - gamma g_t

    with ``mu`` the momentum and ``tau`` the dampening. The weight decay is coupled: it is an
    L2 penalty ``lambda/2 ||theta||^2`` added to the loss, and enters the momentum.

    Parameters
    ----------
    lr : float
        ``gamma`` > 0 (PyTorch's default 1e-3).
    momentum : float
        ``mu`` in [0, 1).
    dampening : float
        ``tau`` in [0, 1].
    weight_decay : float
        ``lambda`` >= 0.
    nesterov : bool
        Nesterov's momentum (PyTorch's form); needs ``momentum > 0`` and ``dampening == 0``.
        With a constant ``lr`` this form gives the same iterates as optax's
        ``trace(nesterov=True)`` and Keras's ``SGD(nesterov=True)``, whose velocities carry
        the learning rate (``docs/training-steps.md``).

    Raises
    ------
    TypeError, ValueError
        Naming the hyper-parameter.

    Examples
    --------
    >>> import numpy as np
    >>> sgd = SGD(lr=0.1, momentum=0.9)
    >>> params, state = sgd.step({"w": np.array([1.0, 2.0])}, {"w": np.array([0.5, -1.0])})
    >>> params["w"], state["w"]["momentum_buffer"]
    (array([0.95, 2.1 ]), array([ 0.5, -1. ]))
    """

    name = "sgd"

    def __init__(self, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        self.lr = _check_lr(lr)
        self.momentum = check_real(momentum, "momentum", minimum=0, below=1)
        self.dampening = check_real(dampening, "dampening", minimum=0)
        if self.dampening > 1:
            raise ValueError(f"dampening: expected a finite real number in [0, 1], got "
                             f"{dampening!r}")
        self.weight_decay = check_real(weight_decay, "weight_decay", minimum=0)
        self.nesterov = _check_bool(nesterov, "nesterov")
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"nesterov: Nesterov momentum requires a momentum > 0 and zero "
                             f"dampening (PyTorch's rule), got momentum={self.momentum!r}, "
                             f"dampening={self.dampening!r}")

    def state_entries(self) -> tuple[str, ...]:
        """``("momentum_buffer",)`` with momentum, ``()`` without."""
        return ("momentum_buffer",) if self.momentum else ()

    def update_parameter(self, param: np.ndarray, grad: np.ndarray, state: Mapping[str, Any]
                         ) -> tuple[np.ndarray, dict[str, Any]]:
        """The formulas of the class docstring for one parameter (``torch.optim.sgd.
        _single_tensor_sgd``)."""
        if self.weight_decay != 0:
            # g_t <- g_t + lambda theta_{t-1}: coupled decay, the gradient of lambda/2 ||theta||^2
            grad = grad + self.weight_decay * param
        new_state: dict[str, Any] = {}
        if self.momentum != 0:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                # b_1 <- g_1: the first buffer is the gradient itself, undamped (a copy: the
                # state must not alias the caller's gradient)
                buffer = np.array(grad, dtype=np.float64, copy=True)
            else:
                # b_t <- mu b_{t-1} + (1 - tau) g_t
                buffer = self.momentum * buffer + (1 - self.dampening) * grad
            new_state["momentum_buffer"] = buffer
            if self.nesterov:
                # g_t <- g_t + mu b_t: the step looks one momentum step ahead
                grad = grad + self.momentum * buffer
            else:
                # g_t <- b_t
                grad = buffer
        # theta_t <- theta_{t-1} - gamma g_t
        return param - self.lr * grad, new_state

    def config(self) -> dict[str, Any]:
        """``{"name": "sgd", "lr", "momentum", "dampening", "weight_decay", "nesterov"}``."""
        return {"name": self.name, "lr": self.lr, "momentum": self.momentum,
                "dampening": self.dampening, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}


class Adam(Optimizer):
    r"""Adam: ``torch.optim.Adam`` to the letter, with AMSGrad and coupled or decoupled weight
    decay.

    PyTorch's pseudo-code, for each parameter at its step ``t`` (``m_0 = v_0 = v_0^max = 0``)::

        g_t <- g_t + lambda theta_{t-1}                 if lambda != 0, coupled (Adam)
        theta_{t-1} <- theta_{t-1} (1 - gamma lambda)   if lambda != 0, decoupled (AdamW)
        m_t <- beta1 m_{t-1} + (1 - beta1) g_t
        v_t <- beta2 v_{t-1} + (1 - beta2) g_t^2
        m_hat <- m_t / (1 - beta1^t)
        v_t^max <- max(v_{t-1}^max, v_t)                if amsgrad
        v_hat <- v_t^max / (1 - beta2^t)                if amsgrad
        v_hat <- v_t / (1 - beta2^t)                    otherwise
        theta_t <- theta_{t-1} - gamma m_hat / (sqrt(v_hat) + eps)

    PyTorch's code evaluates the last line as ``theta - (gamma / (1 - beta1^t)) m_t /
    (sqrt(v_t) / sqrt(1 - beta2^t) + eps)`` (the same number in exact arithmetic); so does
    :meth:`update_parameter`, so that its rounding follows PyTorch's.

    Parameters
    ----------
    lr : float
        ``gamma`` > 0.
    betas : (float, float)
        ``(beta1, beta2)``, each in [0, 1).
    eps : float
        >= 0, added to ``sqrt(v_hat)``.
    weight_decay : float
        ``lambda`` >= 0.
    amsgrad : bool
        Normalise by the running maximum of ``v_t`` (Reddi et al. 2018).
    decoupled_weight_decay : bool, keyword-only
        False (Adam): the decay is added to the gradient (an L2 penalty ``lambda/2
        ||theta||^2``, which enters both moments). True: :class:`AdamW`'s decoupled decay.
    eps_root : float, keyword-only
        >= 0; optax's epsilon inside the root: ``sqrt(v_hat + eps_root) + eps``. 0 is
        PyTorch's.
    bias_correction : bool, keyword-only
        True (PyTorch's): divide by ``1 - beta^t``; False: ``m_hat = m_t``, ``v_hat = v_t``.

    Raises
    ------
    TypeError, ValueError
        Naming the hyper-parameter.

    Examples
    --------
    >>> import numpy as np
    >>> adam = Adam(lr=0.1)
    >>> params, state = adam.step({"w": np.array([1.0, 2.0])}, {"w": np.array([0.5, -1.0])})
    >>> params["w"].round(6), state["w"]["step"]    # the first step is -lr * sign(g)
    (array([0.9, 2.1]), 1)
    """

    name = "adam"

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 decoupled_weight_decay: bool = False, eps_root: float = 0.0,
                 bias_correction: bool = True) -> None:
        self.lr = _check_lr(lr)
        if isinstance(betas, (str, bytes)) or not isinstance(betas, (tuple, list)) \
                or len(betas) != 2:
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = (check_real(betas[0], "betas[0]", minimum=0, below=1),
                      check_real(betas[1], "betas[1]", minimum=0, below=1))
        self.eps = check_real(eps, "eps", minimum=0)
        self.weight_decay = check_real(weight_decay, "weight_decay", minimum=0)
        self.amsgrad = _check_bool(amsgrad, "amsgrad")
        self.decoupled_weight_decay = _check_bool(decoupled_weight_decay,
                                                  "decoupled_weight_decay")
        self.eps_root = check_real(eps_root, "eps_root", minimum=0)
        self.bias_correction = _check_bool(bias_correction, "bias_correction")

    def state_entries(self) -> tuple[str, ...]:
        """``("step", "exp_avg", "exp_avg_sq")``, and ``"max_exp_avg_sq"`` with AMSGrad."""
        return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad
                                                    else ())

    def _complete_entry(self, entry: dict[str, Any], where: str) -> dict[str, Any]:
        if entry and set(entry) != set(self.state_entries()):
            raise ValueError(f"{where}: expected {{}} (a fresh parameter) or all of "
                             f"{list(self.state_entries())}, got {sorted(entry)}")
        return entry

    def update_parameter(self, param: np.ndarray, grad: np.ndarray, state: Mapping[str, Any]
                         ) -> tuple[np.ndarray, dict[str, Any]]:
        """The formulas of the class docstring for one parameter (``torch.optim.adam.
        _single_tensor_adam``)."""
        beta1, beta2 = self.betas
        step = state.get("step", 0) + 1                            # t
        if self.weight_decay != 0:
            if self.decoupled_weight_decay:
                # theta <- theta (1 - gamma lambda): the decay bypasses both moments (AdamW)
                param = param * (1 - self.lr * self.weight_decay)
            else:
                # g_t <- g_t + lambda theta_{t-1}: an L2 penalty, seen by both moments
                grad = grad + self.weight_decay * param
        # m_t <- beta1 m_{t-1} + (1 - beta1) g_t   (m_0 = 0; PyTorch: m.lerp_(g, 1 - beta1))
        exp_avg = beta1 * state.get("exp_avg", 0.0) + (1 - beta1) * grad
        # v_t <- beta2 v_{t-1} + (1 - beta2) g_t^2   (v_0 = 0)
        exp_avg_sq = beta2 * state.get("exp_avg_sq", 0.0) + (1 - beta2) * (grad * grad)
        new_state: dict[str, Any] = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        if self.amsgrad:
            # v_t^max <- max(v_{t-1}^max, v_t)   (v_0^max = 0)
            second = np.maximum(state.get("max_exp_avg_sq", 0.0), exp_avg_sq)
            new_state["max_exp_avg_sq"] = second
        else:
            second = exp_avg_sq
        if self.bias_correction:
            bias_correction1 = 1 - beta1 ** step                   # m_hat = m_t / (1 - beta1^t)
            bias_correction2 = 1 - beta2 ** step                   # v_hat = v_t / (1 - beta2^t)
        else:
            bias_correction1 = bias_correction2 = 1.0
        step_size = self.lr / bias_correction1                     # gamma / (1 - beta1^t)
        # sqrt(v_hat + eps_root) + eps, as PyTorch orders it: sqrt(v_t) / sqrt(1 - beta2^t)
        # (eps_root * (1 - beta2^t) is added inside the root: exactly 0 when eps_root is)
        denom = (np.sqrt(second + self.eps_root * bias_correction2)
                 / bias_correction2 ** 0.5 + self.eps)
        # theta_t <- theta_{t-1} - gamma m_hat / (sqrt(v_hat) + eps)
        return param - step_size * (exp_avg / denom), new_state

    def config(self) -> dict[str, Any]:
        """``{"name": "adam", "lr", "betas", "eps", "weight_decay", "amsgrad",
        "decoupled_weight_decay", "eps_root", "bias_correction"}``."""
        return {"name": self.name, "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "amsgrad": self.amsgrad,
                "decoupled_weight_decay": self.decoupled_weight_decay,
                "eps_root": self.eps_root, "bias_correction": self.bias_correction}


class AdamW(Adam):
    r"""AdamW: ``torch.optim.AdamW`` to the letter, Adam with decoupled weight decay
    (Loshchilov & Hutter 2019).

    The formulas of :class:`Adam` with the decay applied to the parameter, not the gradient::

        theta_{t-1} <- theta_{t-1} (1 - gamma lambda)

    so it never enters ``m_t`` or ``v_t``: a weight decay of ``lambda`` is *not* an L2 penalty
    here (it is for :class:`SGD` and :class:`Adam`). PyTorch's default ``weight_decay`` is
    1e-2.

    Parameters
    ----------
    lr, betas, eps, amsgrad, eps_root, bias_correction
        As :class:`Adam`.
    weight_decay : float
        ``lambda`` >= 0 (default 1e-2).

    Examples
    --------
    >>> import numpy as np
    >>> params, _ = AdamW(lr=0.1, weight_decay=0.5).step({"w": np.array([2.0])},
    ...                                                  {"w": np.array([0.0])})
    >>> params["w"]      # 2 (1 - 0.1 * 0.5): a zero gradient, the decay alone
    array([1.9])
    """

    name = "adamw"

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 eps_root: float = 0.0, bias_correction: bool = True) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True,
                         eps_root=eps_root, bias_correction=bias_correction)

    def config(self) -> dict[str, Any]:
        """``{"name": "adamw", "lr", "betas", "eps", "weight_decay", "amsgrad", "eps_root",
        "bias_correction"}``."""
        config = super().config()
        del config["decoupled_weight_decay"]
        return config


#: The optimizers by their :meth:`Optimizer.config` name.
OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def optimizer_from_config(config: Mapping[str, Any], what: str = "config") -> Optimizer:
    """The optimizer a :meth:`Optimizer.config` describes.

    Parameters
    ----------
    config : mapping
        ``{"name": "sgd" | "adam" | "adamw", <hyper-parameter>: value, ...}``; a missing
        hyper-parameter takes its default (``lr`` included: PyTorch's 1e-3).
    what : str
        Names the configuration in error messages.

    Returns
    -------
    Optimizer

    Raises
    ------
    TypeError, ValueError
        Naming the key: an unknown name, an unknown hyper-parameter, a bad value.

    Examples
    --------
    >>> optimizer_from_config({"name": "adamw", "lr": 0.01}).weight_decay
    0.01
    >>> optimizer_from_config(SGD(0.1, momentum=0.9).config()) == SGD(0.1, momentum=0.9)
    True
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"{what}: expected a dict {{'name': one of {sorted(OPTIMIZERS)}, ...}}, "
                        f"got {type(config).__name__}")
    name = config.get("name")
    if name not in OPTIMIZERS:
        raise ValueError(f"{what}['name']: expected one of {sorted(OPTIMIZERS)}, got {name!r}")
    cls = OPTIMIZERS[name]
    defaults = cls().config()
    check_keys(config, ["name"], [key for key in defaults if key != "name"], what=what)
    arguments = {key: value for key, value in config.items() if key != "name"}
    if "betas" in arguments and isinstance(arguments["betas"], list):
        arguments["betas"] = tuple(arguments["betas"])   # JSON has no tuples
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{what}: {error}") from None
