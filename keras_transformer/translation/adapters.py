"""Named LoRA adapters on a Translator: add, switch, train, save, merge, serve.

One trained base translator, several small adapters beside it (one per
domain, customer or register), switched per call without reloading the base:
what PEFT's named adapters and vLLM's LoRA serving offer language models.

```python
translator.add_adapter("dogs", rank=8)        # attention query/value by default
translator.set_adapter("dogs")                # only this adapter trains now
translator.compile(); translator.fit(dog_sources, dog_targets, epochs=3)
translator.save_adapter("dogs", "dogs.npz")   # small, keyed by layer path
translator.set_adapter(None)                  # the base, bit for bit
fresh.load_adapter("dogs.npz")                # refused on another base
translator.merge_adapter("dogs")              # a plain Translator, merged
translator.export("saved_models/multi")       # serves every adapter
```

How it works: every projection of the model is a `LoRADense`. The adapters'
variables live in one `AdapterBank` layer tracked by the translator (so `fit`
trains them, and `.keras` files and SavedModels hold them); each adapter has
an `(A, B)` pair per target layer path. The active adapter is *attached* to
its layers (`LoRADense.attach`), which then add `scale * x @ A @ B` to their
outputs; with no adapter active nothing is attached and the layers compute
exactly what the base computes. Only the active adapter's variables are
trainable (the base and the other adapters are frozen), and switching
adapters recompiles a compiled translator, because an optimizer's state
belongs to the variables it trained.

Because the choice of adapter is Python state read while a function is
traced, an export traces one decoding function per adapter and picks among
them per text (`export_adapters`).

Layer paths start at the translator's backbone ("encoder_block_0/..."):
the adapted layers are the backbone's, and paths so counted are the ones of
adapter files written while the Translator was its backbone.

Adapter files (`save_adapter`) are NumPy `.npz` archives, one array per
variable under "<layer path>/lora_kernel_a" and "<layer path>/lora_kernel_b",
plus JSON metadata: the adapter's name, rank, alpha, layer paths and the
*fingerprint* of the base it was trained on (a SHA-256 of the base's config,
tokenizers included, and one of the kernels it modifies). `load_adapter`
refuses a file whose fingerprint differs from the translator's.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time

import keras
import numpy as np
from keras import ops

from keras_transformer import _files, validation
from keras_transformer.layers import lora

_FILE_FORMAT = "keras_transformer.translator_adapter"
_FILE_VERSION = 1
_METADATA_KEY = "__adapter_metadata__"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
_KERNELS = ("lora_kernel_a", "lora_kernel_b")
# The translator attribute holding the bank; saved under this name.
_BANK_ATTRIBUTE = "_adapter_bank"


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """What one named adapter is: its shape, its scale and its base.

    Args:
        name: str. The adapter's name.
        rank: int. Rank of every `(A, B)` pair.
        alpha: float. Scale numerator; the update is `alpha / rank * x @ A @ B`.
        paths: tuple of str. The layer paths it adapts, in model order.
        base: dict. The fingerprint of the base it was trained on:
            `{"config_sha256", "weights_sha256"}`.
    """

    name: str
    rank: int
    alpha: float
    paths: tuple
    base: dict

    @property
    def scale(self):
        return self.alpha / self.rank

    def to_dict(self):
        return {**dataclasses.asdict(self), "paths": list(self.paths)}

    @classmethod
    def from_dict(cls, record):
        record = dict(record)
        validation.check_required_keys(
            "adapter", record, ("name", "rank", "alpha", "paths", "base")
        )
        return cls(
            name=_check_name(record["name"]),
            rank=validation.check_positive_int("rank", record["rank"]),
            alpha=validation.check_positive_float("alpha", record["alpha"]),
            paths=tuple(record["paths"]),
            base=dict(record["base"]),
        )


class _Attached:
    """One layer's share of an adapter, in the form `LoRADense.attach` takes."""

    def __init__(self, kernel_a, kernel_b, scale):
        self.kernel_a = kernel_a
        self.kernel_b = kernel_b
        self.scale = scale


class _BankState:
    """Specs and variables by name; a plain object, so Keras tracks only the
    variables (created with `add_weight`) and not the dicts holding them."""

    def __init__(self):
        self.specs = {}
        self.kernels = {}
        self.active = None
        self.base_trainable = None


@keras.saving.register_keras_serializable(package="keras_transformer")
class AdapterBank(keras.layers.Layer):
    """The named LoRA adapters of one translator: an `(A, B)` pair per
    adapter and layer path.

    Created by `add_adapter` (and by the Translator when it is rebuilt from
    a config listing adapters); not called on inputs. Its variables are saved
    under "<adapter>|<layer path>|lora_kernel_a" (and `_b`), so a file loads
    whatever order the adapters were added in.

    Args:
        **kwargs: `keras.layers.Layer` arguments.

    Call arguments:
        None: the bank holds variables only; the layers it adapts read them.

    Example:

    ```python
    translator.add_adapter("dogs")
    bank = translator._adapter_bank        # an AdapterBank
    bank.specs["dogs"].rank                # 8
    ```
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._state = _BankState()
        self.built = True

    @property
    def specs(self):
        """Adapter specs by name, in the order they were added."""
        return dict(self._state.specs)

    def add(self, spec, layers_by_path):
        """Creates the variables of `spec` (A he-uniform, B zeros)."""
        self._tracker.unlock()
        try:
            for path in spec.paths:
                input_dim, units = layers_by_path[path].kernel.shape
                shapes = {"lora_kernel_a": (input_dim, spec.rank),
                          "lora_kernel_b": (spec.rank, units)}
                self._state.kernels[spec.name, path] = tuple(
                    self.add_weight(
                        # TensorFlow scope names allow "." but not "|".
                        name=_key(spec.name, path, kernel).replace("|", "."),
                        shape=shapes[kernel],
                        initializer="he_uniform" if kernel == "lora_kernel_a" else "zeros",
                        autocast=False,
                    )
                    for kernel in _KERNELS
                )
        finally:
            self._tracker.lock()
        self._state.specs[spec.name] = spec

    def kernels(self, name, path):
        """`(A, B)` variables of adapter `name` at layer `path`."""
        return self._state.kernels[name, path]

    def adapter_variables(self, name):
        return [
            variable
            for (owner, _), pair in self._state.kernels.items()
            if owner == name
            for variable in pair
        ]

    def _named_variables(self):
        return {
            _key(name, path, kernel): variable
            for (name, path), pair in self._state.kernels.items()
            for kernel, variable in zip(_KERNELS, pair)
        }

    def save_own_variables(self, store):
        for key, variable in self._named_variables().items():
            store[key] = variable

    def load_own_variables(self, store):
        variables = self._named_variables()
        if set(store.keys()) != set(variables):
            raise ValueError(
                f"The adapter bank cannot load its weights: the file has "
                f"{sorted(store.keys())} but the translator's adapters expect "
                f"{sorted(variables)}."
            )
        for key, variable in variables.items():
            lora.assign_saved(variable, store[key], f"The adapter bank cannot load '{key}'")


def _key(name, path, kernel):
    # "|" never occurs in adapter names or layer names; HDF5 keys may not
    # hold "/", which separates the layer path.
    return "|".join((name, path.replace("/", "|"), kernel))


def is_valid_name(name):
    """Whether `name` can name an adapter: letters, digits, "_" and "-"."""
    return isinstance(name, str) and bool(_NAME_PATTERN.fullmatch(name))


def _check_name(name):
    if not is_valid_name(name):
        raise ValueError(
            "Received an invalid value for argument name, expected a non-empty "
            "adapter name of letters, digits, '_' and '-'. Received: "
            f"name={name!r}"
        )
    return name


def _bank(translator):
    return getattr(translator, _BANK_ATTRIBUTE, None)


def adaptable_layers(translator):
    """The `LoRADense` layers adapters can adapt, by layer path from the
    backbone (see the module docstring)."""
    return lora._lora_dense_layers(translator.backbone)


def adapter_names(translator):
    """The translator's adapter names, in the order they were added."""
    bank = _bank(translator)
    return [] if bank is None else list(bank.specs)


def active_adapter(translator):
    """The active adapter's name, or None (the base)."""
    bank = _bank(translator)
    return None if bank is None else bank._state.active


def _spec(translator, name):
    if name not in adapter_names(translator):
        raise ValueError(
            "Received an invalid value for argument name, expected one of the "
            f"translator's adapters {adapter_names(translator)}. Received: "
            f"name={name!r}"
        )
    return _bank(translator).specs[name]


def fingerprint(translator, paths):
    """The base's identity as far as an adapter on `paths` is concerned.

    Returns:
        `{"config_sha256", "weights_sha256"}`: hashes of the translator's
        config without adapters (architecture and tokenizers) and of the
        float32 kernels of the layers at `paths`, in order.
    """
    layers_by_path = adaptable_layers(translator)
    weights = hashlib.sha256()
    for path in paths:
        kernel = np.ascontiguousarray(
            ops.convert_to_numpy(layers_by_path[path].kernel), dtype="float32"
        )
        weights.update(path.encode("utf-8"))
        weights.update(kernel.tobytes())
    config = json.dumps(base_config(translator), sort_keys=True, default=str)
    return {
        "config_sha256": hashlib.sha256(config.encode("utf-8")).hexdigest(),
        "weights_sha256": weights.hexdigest(),
    }


def base_config(translator):
    """What the base is, for `fingerprint`: the backbone's config
    (architecture and dtype policy) and the tokenizers, without names.

    The same dict as the Translator config of the first layout (when the
    Translator was its backbone) less its name and adapters, so adapter files
    written then keep their fingerprints: keep it so.
    """
    config = {
        key: value
        for key, value in translator.backbone.get_config().items()
        if key not in ("name", "trainable")
    }
    translator_config = translator.get_config()
    for key in ("source_tokenizer", "target_tokenizer"):
        config[key] = translator_config[key]
    return config


def add_adapter(translator, name, rank=8, alpha=16, target_layers=None):
    """Adds a fresh adapter (B = 0: it changes nothing until trained).

    Args:
        translator: a `Translator`.
        name: str of letters, digits, "_" and "-"; new to the translator.
        rank: int. Rank of each `(A, B)` pair.
        alpha: positive float. Scale numerator (`alpha / rank`).
        target_layers: layer path pattern(s) as in
            `keras_transformer.layers.enable_lora`; None takes the query and
            value projections of every attention layer.

    Returns:
        The adapted layer paths.
    """
    _check_name(name)
    if name in adapter_names(translator):
        raise ValueError(
            f"Received name={name!r}, but the translator already has an adapter "
            f"of that name (adapters: {adapter_names(translator)}). Pick a new "
            "name."
        )
    rank = validation.check_positive_int("rank", rank)
    alpha = validation.check_positive_float("alpha", alpha)
    if target_layers is None:
        target_layers = lora.DEFAULT_TARGET_LAYERS
    paths = tuple(lora.match_layers(translator.backbone, target_layers))
    spec = AdapterSpec(name, rank, alpha, paths, fingerprint(translator, paths))
    _add(translator, spec)
    _refresh(translator)
    return list(paths)


def _add(translator, spec):
    bank = _bank(translator)
    if bank is None:
        bank = AdapterBank(name="adapter_bank")
        translator._tracker.unlock()
        try:
            setattr(translator, _BANK_ATTRIBUTE, bank)
        finally:
            translator._tracker.lock()
    bank.add(spec, adaptable_layers(translator))


def set_adapter(translator, name):
    """Makes adapter `name` active (None: the base) and the only one trained.

    With an adapter active, the base's variables and the other adapters are
    frozen; with None, the base's variables get back the trainability they
    had before the first adapter was activated (so `fit` trains the base)
    and every adapter is frozen.
    """
    if name is not None:
        _spec(translator, name)
    bank = _bank(translator)
    if bank is None or bank._state.active == name:
        return
    bank._state.active = name
    _refresh(translator)


def _refresh(translator):
    """Attaches the active adapter, sets trainability, forgets traces."""
    bank = _bank(translator)
    active = bank._state.active
    _attach(translator, active)
    bank_ids = {id(variable) for variable in bank.weights}
    base = [v for v in translator.weights if id(v) not in bank_ids]
    if bank._state.base_trainable is None:
        bank._state.base_trainable = [v.trainable for v in base]
    for variable, trainable in zip(base, bank._state.base_trainable):
        variable.trainable = trainable and active is None
    active_ids = {id(v) for v in bank.adapter_variables(active)} if active else set()
    for variable in bank.weights:
        variable.trainable = id(variable) in active_ids
    lora._forget_traced_functions(translator)
    translator._decoders.functions.clear()
    if translator.compiled:
        # The optimizer's slots belong to the variables it was built for.
        translator.compile_from_config(translator.get_compile_config())


def _attach(translator, name):
    bank = _bank(translator)
    layers_by_path = adaptable_layers(translator)
    for spec in bank.specs.values():
        for path in spec.paths:
            layers_by_path[path].attach(None)
    if name is None:
        return
    spec = bank.specs[name]
    for path in spec.paths:
        kernel_a, kernel_b = bank.kernels(name, path)
        layers_by_path[path].attach(_Attached(kernel_a, kernel_b, spec.scale))


@contextlib.contextmanager
def using(translator, name):
    """Attaches adapter `name` (None: none) for the duration, for tracing.

    Trainability and traced functions are left alone; the active adapter is
    attached again on exit.
    """
    if name is not None:
        _spec(translator, name)
    if _bank(translator) is None:
        yield
        return
    _attach(translator, name)
    try:
        yield
    finally:
        _attach(translator, active_adapter(translator))


def save_adapter(translator, name, filepath):
    """Writes adapter `name` to an `.npz` file, atomically (see module doc)."""
    spec = _spec(translator, name)
    filepath = os.fspath(filepath)
    _files.check_destination(filepath, "the adapter", "adapter.npz")
    bank = _bank(translator)
    arrays = {
        f"{path}/{kernel}": ops.convert_to_numpy(variable)
        for path in spec.paths
        for kernel, variable in zip(_KERNELS, bank.kernels(name, path))
    }
    metadata = {"format": _FILE_FORMAT, "version": _FILE_VERSION, **spec.to_dict()}
    lora.write_npz(filepath, arrays, metadata, "the adapter", metadata_key=_METADATA_KEY)


def load_adapter(translator, filepath, name=None):
    """Adds the adapter saved in `filepath` (under `name`, or its own name).

    Raises:
        ValueError: the file is not an adapter file, the name is taken, or
            the adapter was trained on another base (the fingerprints of both
            are named). Nothing changes on an error.

    Returns:
        The adapter's name.
    """
    filepath = os.fspath(filepath)
    if not os.path.isfile(filepath):
        raise ValueError(f"Adapter file not found: {filepath!r}.")
    not_ours = f"{filepath!r} is not an adapter file written by save_adapter"
    arrays, metadata = lora.read_npz(
        filepath, not_ours, _FILE_FORMAT, _FILE_VERSION, metadata_key=_METADATA_KEY
    )
    try:
        spec = AdapterSpec.from_dict(
            {key: value for key, value in metadata.items()
             if key not in ("format", "version")}
        )
    except (ValueError, TypeError) as error:
        raise ValueError(f"{not_ours}: its metadata is invalid ({error}).") from None
    if name is not None:
        spec = dataclasses.replace(spec, name=_check_name(name))
    if spec.name in adapter_names(translator):
        raise ValueError(
            f"Cannot load the adapter {spec.name!r} from {filepath!r}: the "
            "translator already has an adapter of that name (adapters: "
            f"{adapter_names(translator)}). Pass name= to load it under another."
        )
    layers_by_path = adaptable_layers(translator)
    unknown = [path for path in spec.paths if path not in layers_by_path]
    current = None if unknown else fingerprint(translator, spec.paths)
    if current != spec.base:
        raise ValueError(
            f"The adapter {spec.name!r} in {filepath!r} was trained on another "
            f"base model: the adapter's base has config sha256 "
            f"{spec.base.get('config_sha256', '?')[:12]} and weights sha256 "
            f"{spec.base.get('weights_sha256', '?')[:12]}, this translator "
            + (
                f"has no layers {unknown}"
                if unknown
                else f"has config sha256 {current['config_sha256'][:12]} and "
                f"weights sha256 {current['weights_sha256'][:12]}"
            )
            + ". Load it onto the model it was trained on, or train the "
            "adapter again on this one."
        )
    expected = {f"{path}/{kernel}" for path in spec.paths for kernel in _KERNELS}
    if set(arrays) != expected:
        raise ValueError(
            f"{not_ours}: it has the entries {sorted(arrays)}, expected "
            f"{sorted(expected)}."
        )
    for path in spec.paths:
        input_dim, units = layers_by_path[path].kernel.shape
        for kernel, shape in zip(_KERNELS, ((input_dim, spec.rank), (spec.rank, units))):
            if arrays[f"{path}/{kernel}"].shape != shape:
                raise ValueError(
                    f"{not_ours}: '{path}/{kernel}' has shape "
                    f"{arrays[f'{path}/{kernel}'].shape}, expected {shape}."
                )
    _add(translator, spec)
    bank = _bank(translator)
    for path in spec.paths:
        for kernel, variable in zip(_KERNELS, bank.kernels(spec.name, path)):
            variable.assign(arrays[f"{path}/{kernel}"])
    _refresh(translator)
    return spec.name


def merge_adapter(translator, name):
    """A new translator without adapters whose kernels hold `W + scale * A @ B`.

    The translator itself is unchanged. The merged one computes what the
    translator computes with `name` active, to float32 rounding, with no
    adapter branch left: for serving one adapter at the base's cost.
    """
    spec = _spec(translator, name)
    bank = _bank(translator)
    merged = without_adapters(translator)
    layers_by_path = adaptable_layers(merged)
    for path in spec.paths:
        kernel_a, kernel_b = bank.kernels(name, path)
        layer = layers_by_path[path]
        layer.kernel.assign(
            ops.add(layer.kernel, ops.multiply(ops.matmul(kernel_a, kernel_b), spec.scale))
        )
    return merged


def without_adapters(translator):
    """A new translator of the same config and base weights, no adapters."""
    config = translator.get_config()
    for key in ("adapters", "active_adapter"):
        config.pop(key, None)
    copy = type(translator).from_config(config)
    bank = _bank(translator)
    bank_ids = set() if bank is None else {id(v) for v in bank.weights}
    base = [v for v in translator.weights if id(v) not in bank_ids]
    if [tuple(v.shape) for v in base] != [tuple(v.shape) for v in copy.weights]:
        raise ValueError(
            f"Cannot copy the base of translator '{translator.name}': the "
            "rebuilt translator's weights do not line up with its own."
        )
    for target, source in zip(copy.weights, base):
        target.assign(source)
    return copy


def get_config(translator):
    """The Translator config entries that rebuild its adapters (or {})."""
    names = adapter_names(translator)
    if not names:
        return {}
    bank = _bank(translator)
    return {
        "adapters": [bank.specs[name].to_dict() for name in names],
        "active_adapter": active_adapter(translator),
    }


def restore(translator, adapters, active_adapter=None):
    """Re-creates the adapters of a config (their weights load afterwards)."""
    if adapters is None:
        return
    if not isinstance(adapters, (list, tuple)):
        raise ValueError(
            "Received an invalid value for argument adapters, expected a list "
            f"of adapter records. Received: adapters={adapters!r}"
        )
    for record in adapters:
        spec = record if isinstance(record, AdapterSpec) else AdapterSpec.from_dict(record)
        if spec.name in adapter_names(translator):
            raise ValueError(f"Received two adapters named {spec.name!r}.")
        lora.match_layers(translator.backbone, list(spec.paths))
        _add(translator, spec)
    if active_adapter is not None:
        _spec(translator, active_adapter)
    bank = _bank(translator)
    if bank is not None:
        bank._state.active = active_adapter
        _refresh(translator)


class AdapterMethods:
    """The adapter methods of `Translator` (a mixin; the logic is above)."""

    def add_adapter(self, name, rank=8, alpha=16, target_layers=None):
        """Adds a fresh named LoRA adapter (inactive; it changes nothing yet).

        Args:
            name: str of letters, digits, `_` and `-`, new to the translator.
            rank: int. Rank of each low-rank pair.
            alpha: positive float. The update is `alpha / rank * x @ A @ B`.
            target_layers: layer path pattern(s) (see `layers.enable_lora`);
                None: the query and value projections of every attention.

        Returns:
            The adapted layer paths.
        """
        return add_adapter(self, name, rank, alpha, target_layers)

    def set_adapter(self, name):
        """Activates adapter `name` (None: the base): it alone trains in `fit`,
        and `translate`, `evaluate` and `predict` use it."""
        set_adapter(self, name)

    @property
    def adapters(self):
        """The adapter names, in the order they were added."""
        return adapter_names(self)

    @property
    def active_adapter(self):
        """The active adapter's name, or None."""
        return active_adapter(self)

    def save_adapter(self, name, filepath):
        """Writes adapter `name`, with its base's fingerprint, to an `.npz`."""
        save_adapter(self, name, filepath)

    def load_adapter(self, filepath, name=None):
        """Adds a saved adapter (under `name`, default its own); refuses one
        trained on another base. Returns its name."""
        return load_adapter(self, filepath, name=name)

    def merge_adapter(self, name):
        """A new Translator, without adapters, with adapter `name` folded
        into its kernels (this one is unchanged)."""
        return merge_adapter(self, name)


def export_adapters(translator):
    """What `keras_transformer.translation.export.export_translator` needs to serve the
    translator's adapters: `(names, using)`, or None without adapters."""
    names = adapter_names(translator)
    if not names:
        return None
    return names, lambda name: using(translator, name)


def trainable_parameters(translator):
    """The number of scalars `fit` would train now."""
    return int(sum(np.prod(v.shape) for v in translator.trainable_weights))


def train_adapter(
    translator,
    name,
    sources,
    targets,
    rank=8,
    alpha=16,
    target_layers=None,
    epochs=5,
    batch_size=32,
    learning_rate=5e-3,
    warmup_steps=None,
    **fit_kwargs,
):
    """Adds adapter `name`, activates it and fine-tunes it alone on texts.

    The recipe of `scripts/train.py --adapter`: `Translator.compile` with
    a cosine decay to 0 over the run (LoRA takes higher rates than full
    fine-tuning: only the low-rank pairs move).

    Args:
        translator: a trained `Translator`.
        name, rank, alpha, target_layers: as in `add_adapter`.
        sources, targets: list of str. The domain's training pairs.
        epochs, batch_size: int. As in `Translator.fit`.
        learning_rate: float. Peak rate.
        warmup_steps: int or None. Linear warm-up steps; None: 5% of the run.
        **fit_kwargs: other `Translator.fit` arguments.

    Returns:
        `(history, seconds)`: the `fit` history and its wall time.
    """
    add_adapter(translator, name, rank=rank, alpha=alpha, target_layers=target_layers)
    set_adapter(translator, name)
    # `fit` fits the warm-up and the decay to the run it makes.
    translator.compile(learning_rate=learning_rate, warmup_steps=warmup_steps)
    started = time.perf_counter()
    history = translator.fit(
        sources, targets, epochs=epochs, batch_size=batch_size, **fit_kwargs
    )
    return history, time.perf_counter() - started
