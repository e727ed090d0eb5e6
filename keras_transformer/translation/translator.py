"""The Translator: one object that holds a Transformer (its `backbone`) and
its tokenizers, and owns the training recipe, decoding, saving and export.

```python
translator = Translator.from_texts(sources, targets, tokenizer="character")
translator.compile()                       # the library's recipe
translator.fit(sources, targets, epochs=5) # raw text in, batches built here
translator.translate(["5 March 2021"])     # greedy; method="beam" / "sample"
translator.save("dates.keras")             # tokenizers inside, atomic
translator.export("saved_models/dates")    # saved_models/dates/1/, TF only
```

Reading order: texts -> `source_tokenizer` -> ids -> `backbone`, the
`Transformer` (embeddings -> encoder -> decoder -> logits,
`models/transformer.py`) -> a `Sampler` (`keras_transformer.decoding`) -> ids
-> `target_tokenizer` -> texts (`text.text_decoder`); the same path is saved
into the export (`keras_transformer.translation.export`).

The Translator is the entry point; each of its jobs lives in the module
named for it, and its methods delegate: tokenizer kinds and training in
`vocabulary`, the checks of text arguments in `text`, the decisions of a
training run (optimizer, schedule, XLA, time budget) in `training`,
attention analysis in `attention`, reading first-layout `.keras` files in
`layout`, the SavedModel and its version folders in `export`.
"""

import collections.abc
import dataclasses
import math
import re

import keras
import numpy as np

from keras_transformer._tensorflow import import_tensorflow
from keras_transformer import callbacks, decoding, distribute, losses, validation
from keras_transformer.data import packing, pipeline, tokenizers
from keras_transformer.layers import _token_ids
from keras_transformer.models import loading, trainer
from keras_transformer.models.transformer import (
    Transformer,
    TransformerConfig,
    check_packable,
)
from keras_transformer.translation import adapters as adapters_lib
from keras_transformer.translation import attention, export, text, training
from keras_transformer.translation import layout, vocabulary

# Re-exported: `AttentionMap` was defined here, and callers import it from here.
from keras_transformer.translation.attention import AttentionMap  # noqa: F401

tf = import_tensorflow(__name__)

# Texts decoded per call of the compiled decoding function.
DEFAULT_TRANSLATE_BATCH_SIZE = 64
# TransformerConfig fields that the tokenizers set, never the caller.
DERIVED_FIELDS = ("source_vocabulary_size", "target_vocabulary_size", "padding_id")
# Stands in for the vocabulary sizes when model fields are checked before
# any tokenizer is trained (`check_model_fields`).
_PLACEHOLDER_VOCABULARY_SIZE = 1000


def check_model_fields(fields):
    """Raises `ValueError` unless `fields` are `TransformerConfig` fields
    that make a valid config with the tokenizers' vocabulary sizes.

    Every rule of `TransformerConfig` is checked now, with placeholder
    vocabulary sizes, so a recipe or a `from_texts` call fails before any
    tokenizer is trained.

    Args:
        fields: mapping of `TransformerConfig` fields, without
            `DERIVED_FIELDS`.
    """
    if not isinstance(fields, collections.abc.Mapping):
        raise ValueError(
            "Received an invalid value for the model fields, expected a dict "
            f"of TransformerConfig fields. Received: {fields!r}"
        )
    for field in DERIVED_FIELDS:
        if field in fields:
            raise ValueError(
                f"Received {field}={fields[field]!r}: from_texts takes the "
                "vocabulary sizes and the padding id from the tokenizers it "
                "trains. Pass vocabulary_size= to size them, and leave "
                f"{field} out."
            )
    validation.check_known_names(
        "TransformerConfig field",
        fields,
        [field.name for field in dataclasses.fields(TransformerConfig)
         if field.name not in DERIVED_FIELDS],
    )  # fmt: skip
    TransformerConfig(
        source_vocabulary_size=_PLACEHOLDER_VOCABULARY_SIZE,
        target_vocabulary_size=_PLACEHOLDER_VOCABULARY_SIZE,
        **fields,
    )


@keras.saving.register_keras_serializable(package="keras_transformer")
class Translator(
    adapters_lib.AdapterMethods,
    trainer.OptimizerBuiltBeforeTracing,
    loading.AtomicSave,
    keras.Model,
):
    """A translator of text: a Transformer backbone and its tokenizers.

    The Translator holds its network, `backbone` (a `Transformer`: ids in,
    logits out), and its source and target tokenizers, as keras-hub's
    `Seq2SeqLM` holds a backbone and a preprocessor; calling the Translator
    calls the backbone. So it trains on raw text, translates strings, saves
    to one `.keras` file with its vocabularies and exports a SavedModel that
    serves strings with TensorFlow alone. `config`, `transformer_layers`,
    `padding_id`, `max_source_length` and `max_target_length` are the
    backbone's.

    Args:
        config: `TransformerConfig` (or a dict of its fields) of the
            backbone to build. Exactly one of `config`,
            `transformer_layers` and `backbone`.
        source_tokenizer: a `keras_transformer.data.Tokenizer` for the
            inputs; its ids must fit the source vocabulary.
        target_tokenizer: likewise for the outputs (may be the same object
            as `source_tokenizer` for a joint vocabulary).
        transformer_layers: a `TransformerLayers` composed by hand from this
            library's blocks, instead of `config`.
        dtype: optional dtype policy of the layers built from `config`
            (`"mixed_bfloat16"`, `"mixed_float16"`); logits stay float32.
        adapters: optional list of named LoRA adapter records (what
            `get_config` writes; use `add_adapter` to make them).
        active_adapter: optional name of the adapter active after loading.
        backbone: a built `Transformer` to hold, instead of `config` or
            `transformer_layers` (and then without `dtype`: the backbone's
            layers have theirs).
        **kwargs: `keras.Model` arguments (`name`, `trainable`).

    Call arguments:
        inputs: dict of int32 `"source_ids"` and `"target_ids"`
            `(batch, length)`, padded with the padding id; `target_ids`
            starts with BOS.
        training: bool. Whether dropout is on.

    Returns float32 next-token logits
    `(batch, target_length, target_vocabulary_size)`, those of `backbone`.

    Example:

    ```python
    sources, targets = ["one", "two", "three"], ["eins", "zwei", "drei"]
    translator = Translator.from_texts(sources, targets, tokenizer="word",
                                       hidden_dim=32, intermediate_dim=64)
    translator.compile()
    translator.fit(sources, targets, epochs=1, batch_size=2)
    translator.translate(["two"])                      # ["..."]
    translator.translate(["two"], method="beam", beam_size=4)
    translator.backbone                                # the Transformer
    ```
    """

    def __init__(
        self,
        config=None,
        source_tokenizer=None,
        target_tokenizer=None,
        transformer_layers=None,
        dtype=None,
        adapters=None,
        active_adapter=None,
        backbone=None,
        **kwargs,
    ):
        if isinstance(source_tokenizer, dict):
            source_tokenizer = tokenizers.deserialize_tokenizer(source_tokenizer)
        if isinstance(target_tokenizer, dict):
            target_tokenizer = tokenizers.deserialize_tokenizer(target_tokenizer)
        kwargs.setdefault("name", "translator")
        given = {"config": config, "transformer_layers": transformer_layers,
                 "backbone": backbone}  # fmt: skip
        if sum(value is not None for value in given.values()) != 1:
            raise ValueError(
                "Pass exactly one of config (a TransformerConfig), "
                "transformer_layers (a TransformerLayers) and backbone (a "
                "Transformer). Received: "
                + ", ".join(f"{name}={value!r}" for name, value in given.items())
            )
        if backbone is None:
            backbone = Transformer(
                config=config,
                transformer_layers=transformer_layers,
                dtype=dtype,
                name="transformer",
            )
        elif not isinstance(backbone, Transformer):
            raise ValueError(
                "Received an invalid value for argument backbone, expected a "
                f"keras_transformer Transformer. Received: backbone={backbone!r}"
            )
        elif dtype is not None:
            raise ValueError(
                f"Received dtype={dtype!r} with a backbone: the backbone's "
                "layers were built with their dtype policy. Build the "
                "backbone with Transformer(config, dtype=...) instead."
            )
        text.check_tokenizers_fit(
            backbone.transformer_layers, source_tokenizer, target_tokenizer
        )
        if backbone.padding_id != target_tokenizer.pad_id:
            raise ValueError(
                f"The model's padding id {backbone.padding_id} differs from the "
                f"target tokenizer's {target_tokenizer.pad_id}. Build the model "
                "with padding_id=tokenizer.pad_id."
            )
        super().__init__(**kwargs)
        self.backbone = backbone
        self.source_tokenizer = source_tokenizer
        self.target_tokenizer = target_tokenizer
        # The backbone built every variable; the Translator adds none.
        self.built = True
        self._jit_compile_auto = False
        # One compiled decoding function per setting, reused across calls.
        self._decoders = _DecoderCache()
        adapters_lib.restore(self, adapters, active_adapter)

    def call(self, inputs, training=None):
        return self.backbone(inputs, training=training)

    @property
    def config(self):
        """The backbone's `TransformerConfig` (None for hand-composed
        layers)."""
        return self.backbone.config

    @property
    def transformer_layers(self):
        """The backbone's `TransformerLayers`."""
        return self.backbone.transformer_layers

    @property
    def padding_id(self):
        return self.backbone.padding_id

    @property
    def max_source_length(self):
        return self.backbone.max_source_length

    @property
    def max_target_length(self):
        return self.backbone.max_target_length

    def step_model(self):
        """The backbone as the samplers of `keras_transformer.decoding` see
        it."""
        return self.backbone.step_model()

    @classmethod
    def from_texts(
        cls,
        sources,
        targets,
        tokenizer="sentencepiece",
        vocabulary_size=None,
        joint_vocabulary=False,
        tokenizer_options=None,
        dtype=None,
        name="translator",
        **config,
    ):
        """Trains tokenizers on a corpus and builds a translator for it.

        Args:
            sources: list of str. Training source texts.
            targets: list of str. Their translations.
            tokenizer: `"sentencepiece"` (subword; needs `sentencepiece`
                and `tensorflow-text`), `"word"` or `"character"`.
            vocabulary_size: int or None. Vocabulary size of each tokenizer
                (of the joint one with `joint_vocabulary=True`): the exact
                size for SentencePiece, an upper bound for word and
                character tokenizers (None: every token seen).
            joint_vocabulary: bool. One tokenizer trained on sources and
                targets together, used on both sides, with one embedding
                table (`share_embeddings=True` unless given).
            tokenizer_options: dict of further arguments of the tokenizer
                class's `from_texts` (e.g. `min_frequency`, `lowercase`,
                `model_type`).
            dtype: optional dtype policy of the layers.
            name: str. The model's name.
            **config: `TransformerConfig` fields. The vocabulary sizes come
                from the tokenizers; `max_source_length` and
                `max_target_length` default to 1.5 times the longest
                training source and target (+1 for BOS), in tokens.

        Returns:
            A `Translator`, not yet compiled.
        """
        sources = text.check_texts("sources", sources)
        targets = text.check_texts("targets", targets)
        if len(sources) != len(targets) or not sources:
            raise ValueError(
                "sources and targets must pair up and be non-empty, but received "
                f"{len(sources)} sources and {len(targets)} targets."
            )
        for argument, texts in (("sources", sources), ("targets", targets)):
            if not any(texts):
                raise ValueError(
                    f"Received an invalid value for argument {argument}, expected "
                    f"texts to learn a vocabulary from, but all {len(texts)} "
                    f"{argument} are empty strings. Check the file or column they "
                    "were read from."
                )
        options = {} if tokenizer_options is None else tokenizer_options
        vocabulary.check_tokenizer_arguments(tokenizer, vocabulary_size, options)
        options = dict(options)
        joint_vocabulary = validation.check_bool("joint_vocabulary", joint_vocabulary)
        check_model_fields(config)
        if joint_vocabulary:
            source_tokenizer = target_tokenizer = vocabulary.train_tokenizer(
                tokenizer, sources + targets, vocabulary_size, options
            )
            config.setdefault("share_embeddings", True)
        else:
            source_tokenizer = vocabulary.train_tokenizer(
                tokenizer, sources, vocabulary_size, options
            )
            target_tokenizer = vocabulary.train_tokenizer(
                tokenizer, targets, vocabulary_size, options
            )
        if "max_source_length" not in config:
            config["max_source_length"] = math.ceil(
                vocabulary.LENGTH_MARGIN * vocabulary.longest(source_tokenizer, sources)
            )
        if "max_target_length" not in config:
            config["max_target_length"] = math.ceil(
                vocabulary.LENGTH_MARGIN
                * (vocabulary.longest(target_tokenizer, targets) + 1)
            )
        config = TransformerConfig(
            source_vocabulary_size=source_tokenizer.vocabulary_size,
            target_vocabulary_size=target_tokenizer.vocabulary_size,
            padding_id=target_tokenizer.pad_id,
            **config,
        )
        return cls(config, source_tokenizer, target_tokenizer, dtype=dtype, name=name)

    # Training ----------------------------------------------------------------

    def compile(
        self,
        optimizer=None,
        loss=None,
        metrics=None,
        learning_rate=None,
        warmup_steps=None,
        total_steps=None,
        label_smoothing=0.1,
        jit_compile="auto",
        warmup_fraction=None,
        **kwargs,
    ):
        """Compiles with the library's recipe; any piece can be overridden.

        Defaults: `MaskedSparseCategoricalCrossentropy` (padding ignored,
        `label_smoothing`), `MaskedAccuracy` and `SequenceExactMatch`, Adam
        (0.9, 0.98, 1e-9) on a `WarmupCosineDecay` schedule: the rate rises
        linearly to `learning_rate`, then decays on a cosine to 0 at the
        end of the run. With `total_steps=None` the run is the next `fit`:
        `fit` counts the updates it will make and fits the schedule to
        them (warm-up 5% of the run unless `warmup_steps` is given), so
        `compile()` then `fit` learns whatever the run's length. Under a
        `mixed_float16` policy the optimizer gets loss scaling.

        Args:
            optimizer: a Keras optimizer (or name) instead of the recipe's;
                `learning_rate`, `warmup_steps` and `total_steps` are then
                unused.
            loss: a Keras loss instead of the masked cross-entropy.
            metrics: list of metrics instead of the defaults.
            learning_rate: float or None. Peak learning rate; None takes
                `default_learning_rate(hidden_dim)`, which shrinks as the
                model widens.
            warmup_steps: int or None. Steps of linear warm-up; None takes
                `warmup_fraction` of the run (1000 steps when `fit` cannot
                count them).
            total_steps: int or None. Updates of the whole run, for the
                cosine decay to 0, longer than `warmup_steps` (a longer
                warm-up is refused, never shortened); None lets each `fit`
                set it.
            label_smoothing: float in [0, 1).
            jit_compile: `"auto"`, True or False. `"auto"` compiles with XLA
                under a TPU strategy, and for a `fit` on texts long enough to
                repay the compilations: XLA compiles one program per batch
                shape (about 15 s each for the corpus recipe's model on a
                2-core CPU) and then runs each step about 1.3x faster, so
                `fit` turns it on, with static shapes, when the run has at
                least `training.XLA_STEPS_PER_PROGRAM` steps per length bucket;
                not for a model in mixed_bfloat16 on CPUs that multiply
                bfloat16 natively, whose oneDNN kernels outrun XLA's.
            warmup_fraction: float in (0, 1) or None. The warm-up's share of
                the run when `warmup_steps` is None; None: 5%.
            **kwargs: other `keras.Model.compile` arguments.
        """
        if optimizer is None:
            optimizer = training.recipe_optimizer(
                self, learning_rate, warmup_steps, total_steps, warmup_fraction
            )
        if loss is None:
            loss = losses.MaskedSparseCategoricalCrossentropy(
                label_smoothing=label_smoothing, padding_id=self.padding_id
            )
        if metrics is None:
            metrics = training.default_metrics(self.padding_id)
        # `fit` on texts decides "auto" once it knows the run's length.
        self._jit_compile_auto = jit_compile == "auto"
        if jit_compile == "auto":
            jit_compile = isinstance(
                self.distribute_strategy, tf.distribute.TPUStrategy
            )
        if not isinstance(jit_compile, bool):
            raise ValueError(
                "Received an invalid value for argument jit_compile, expected "
                f"'auto', True or False. Received: jit_compile={jit_compile!r}"
            )
        super().compile(
            optimizer=optimizer,
            loss=loss,
            metrics=metrics,
            jit_compile=jit_compile,
            **kwargs,
        )

    def compile_from_config(self, config):
        """Recompiles a loaded model as it was compiled before saving.

        The saved config holds the optimizer, loss and metrics objects that
        `compile` resolved, so they are passed through as they are.
        """
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            # Create the optimizer's variables so the saved ones load.
            self.optimizer.build(self.trainable_variables)

    def make_dataset(
        self,
        sources,
        targets,
        batch_size=64,
        shuffle=True,
        seed=0,
        repeat=False,
        static_shapes=False,
        tokens_per_batch=None,
        bucket_boundaries=None,
        pack=False,
    ):
        """Teacher-forcing batches from parallel texts, length-bucketed or
        packed.

        Pairs longer than the model's limits are dropped (and counted in a
        warning), never truncated. With `tokens_per_batch`, batches hold
        about that many tokens (padding included) instead of `batch_size`
        pairs. See `keras_transformer.data.make_translation_dataset`. With
        `pack=True`, pairs are packed several to a row instead
        (`keras_transformer.data.packing`; needs `tokens_per_batch`).

        Returns:
            A `tf.data.Dataset` of `({"source_ids", "target_ids"}, labels)`
            (packed: with the segment ids as well); unless it repeats, its
            cardinality is set (Keras then knows the epoch length from the
            first epoch on).
        """
        validation.check_positive_int(
            "tokens_per_batch", tokens_per_batch, allow_none=True
        )
        shuffle = validation.check_bool("shuffle", shuffle)
        static_shapes = validation.check_bool("static_shapes", static_shapes)
        self._check_packing(pack, tokens_per_batch, bucket_boundaries)
        return self._batches(
            self._tokenize(sources, targets),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            repeat=repeat,
            static_shapes=static_shapes,
            tokens_per_batch=tokens_per_batch,
            bucket_boundaries=bucket_boundaries,
            pack=pack,
        )

    def _check_packing(self, pack, tokens_per_batch, bucket_boundaries):
        """Raises, before any tokenizing, for packing this model or these
        batches cannot take."""
        if not validation.check_bool("pack", pack):
            return
        if tokens_per_batch is None or bucket_boundaries is not None:
            raise ValueError(
                "pack=True fills rows of one length, sized by tokens: it "
                "needs tokens_per_batch and takes no bucket_boundaries. "
                f"Received: tokens_per_batch={tokens_per_batch}, "
                f"bucket_boundaries={bucket_boundaries!r}"
            )
        check_packable(self.transformer_layers)

    def _tokenize(self, sources, targets):
        """The pairs every dataset of a run is batched from, tokenized once
        (`data.pipeline.tokenize_pairs`)."""
        return pipeline.tokenize_pairs(
            text.check_texts("sources", sources),
            text.check_texts("targets", targets),
            self.source_tokenizer,
            self.target_tokenizer,
            self.max_source_length,
            self.max_target_length,
        )

    def _batches(
        self,
        pairs,
        batch_size,
        shuffle,
        seed,
        repeat,
        static_shapes,
        tokens_per_batch,
        bucket_boundaries,
        pack=False,
    ):
        """`make_dataset` on pairs `_tokenize` made."""
        # Static shapes: every batch full, the last one dropped from an
        # endless stream or padded at the end of an epoch.
        remainder = {
            "drop_remainder": static_shapes and repeat,
            "pad_incomplete_batches": static_shapes and not repeat,
        }
        if pack:
            dataset = packing.packed_dataset(
                pairs, tokens_per_batch, shuffle=shuffle, seed=seed, repeat=repeat,
                **remainder,
            )  # fmt: skip
        else:
            dataset = pipeline.batch_pairs(
                pairs,
                batch_size=None if tokens_per_batch else batch_size,
                tokens_per_batch=tokens_per_batch,
                bucket_boundaries=bucket_boundaries,
                shuffle=shuffle,
                seed=seed,
                repeat=repeat,
                pad_to_bucket_boundary=static_shapes,
                **remainder,
            )
        # Under a multi-worker strategy each worker keeps its part of every
        # global batch (an in-memory dataset has no files to shard by).
        return distribute.shard_dataset(dataset)

    @staticmethod
    def _stream_tokens_per_batch(
        pairs, batch_size, shuffle, seed, tokens_per_batch, bucket_boundaries, pack
    ):
        """Real `(source, label)` tokens in a batch of the endless stream
        `_batches(..., repeat=True)` makes, on average."""
        if pack:
            return packing.stream_tokens_per_batch(
                pairs, tokens_per_batch, shuffle=shuffle, seed=seed
            )
        return pipeline.stream_tokens_per_batch(
            pairs,
            batch_size=None if tokens_per_batch else batch_size,
            tokens_per_batch=tokens_per_batch,
            bucket_boundaries=bucket_boundaries,
        )

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=None,
        validation_data=None,
        shuffle=True,
        seed=0,
        static_shapes=None,
        tokens_per_batch=None,
        bucket_boundaries=None,
        checkpoint_dir=None,
        checkpoint_every=None,
        minutes=None,
        pack=False,
        **kwargs,
    ):
        """`keras.Model.fit` on raw text as well as on ids.

        With texts (`x` and `y` lists of strings, or `x` a `tf.data.Dataset`
        of `(source, target)` string pairs), the batches are built here:
        tokenized, length-bucketed, `batch_size` pairs each (default 64),
        reshuffled every epoch from `seed`. Any other `x` goes to Keras as
        it is.

        Args:
            x, y: texts as above, or what `keras.Model.fit` takes.
            batch_size: int. Pairs per batch (texts only; Keras' meaning
                otherwise).
            epochs: int or None. Passes over the data; None: 1, or with
                `minutes` as many as the budget holds.
            validation_data: `(sources, targets)` texts, a dataset of string
                pairs, or what Keras takes.
            shuffle: bool. Reshuffle the texts every epoch.
            seed: int. Shuffle seed.
            static_shapes: bool or None. Pad every batch to its length
                bucket's upper bound (few shapes, for XLA); None: when XLA
                compiles the train step (see `compile(jit_compile=...)`).
            tokens_per_batch: int or None. Batch by token count (texts
                only) instead of `batch_size` pairs.
            bucket_boundaries: list of int or None. Length-bucket
                boundaries (texts only; default: 8 equal buckets).
            pack: bool. Pack several pairs to a row instead of bucketing
                (texts only; needs `tokens_per_batch`): two batch shapes
                at most, so two XLA programs, and almost no padding
                (`keras_transformer.data.packing`). Validation texts are
                packed too. The `sequence_exact_match` metric then scores
                rows, not pairs.
            checkpoint_dir: str or None. Checkpoint into this folder every
                `checkpoint_every` steps (default: every epoch) and resume
                from it when it holds a checkpoint
                (`keras_transformer.checkpointing.fit_resumable`; texts
                only).
            checkpoint_every: int or None. Steps between checkpoints (needs
                `checkpoint_dir`).
            minutes: float or None. Train for this many minutes of wall
                time and stop: `fit` returns within about a step of it,
                tokenizing, compiling and validation included; `epochs`, if
                given, is an upper bound. A schedule made by `compile()` is
                fitted to the steps the budget holds as the run goes
                (`callbacks.TimeBudget`), so it warms up for a fraction of
                them and decays to 0 as the budget ends, on any corpus and
                machine. Under `jit_compile="auto"` XLA is turned on for a
                budget of at least `training.XLA_SECONDS_PER_PROGRAM` per length
                bucket. TensorFlow backend only.
            **kwargs: other `keras.Model.fit` arguments.

        Returns:
            A `keras.callbacks.History`.
        """
        # Keras trains nothing, without a word, for epochs < 1.
        validation.check_positive_int("epochs", epochs, allow_none=True)
        budget = training.time_budget(self, minutes, checkpoint_dir)
        if epochs is None:
            epochs = 1 if budget is None else training.EPOCHS_OF_A_TIME_BUDGET
        if budget is not None:
            kwargs["callbacks"] = [budget, *(kwargs.get("callbacks") or [])]
        validation.check_positive_int("checkpoint_every", checkpoint_every, allow_none=True)
        if checkpoint_every is not None and checkpoint_dir is None:
            raise ValueError(
                f"Received checkpoint_every={checkpoint_every} without "
                "checkpoint_dir: nothing would be checkpointed. Pass "
                "checkpoint_dir= as well."
            )
        texts = text.as_texts("x", x, y)
        if texts is None:
            text.check_model_data("x", x, "fit")
            if checkpoint_dir is not None:
                raise ValueError(
                    "checkpoint_dir works with texts (lists of strings or a "
                    "dataset of string pairs); for batches of ids use "
                    "keras_transformer.checkpointing.fit_resumable."
                )
            if validation.check_bool("pack", pack):
                raise ValueError(
                    "pack=True packs texts (lists of strings or a dataset of "
                    "string pairs) into rows; batches of ids are taken as "
                    "they are. Received pack=True with batches of ids: pack "
                    "them with keras_transformer.data.packing, or pass texts."
                )
            training.fit_schedule_to_run(
                self,
                training.steps_of_keras_fit(
                    x, batch_size, epochs, kwargs.get("steps_per_epoch")
                ),
            )
            return super().fit(
                x,
                y,
                batch_size=batch_size,
                epochs=epochs,
                validation_data=validation_data,
                shuffle=shuffle,
                **kwargs,
            )
        batch_size = validation.check_positive_int(
            "batch_size", 64 if batch_size is None else batch_size
        )
        validation.check_positive_int(
            "tokens_per_batch", tokens_per_batch, allow_none=True
        )
        shuffle = validation.check_bool("shuffle", shuffle)
        if static_shapes is not None:
            static_shapes = validation.check_bool("static_shapes", static_shapes)
        self._check_packing(pack, tokens_per_batch, bucket_boundaries)
        # Tokenized once: the step count, the training stream of every epoch
        # (and of a resumed run) and the token count all read these.
        pairs = self._tokenize(*texts)

        def make_training_dataset(repeat, static_shapes):
            return self._batches(
                pairs,
                batch_size=batch_size,
                shuffle=shuffle,
                seed=seed,
                repeat=repeat,
                static_shapes=static_shapes,
                tokens_per_batch=tokens_per_batch,
                bucket_boundaries=bucket_boundaries,
                pack=pack,
            )

        steps_per_epoch = validation.check_positive_int(
            "steps_per_epoch", kwargs.pop("steps_per_epoch", None), allow_none=True
        ) or len(make_training_dataset(repeat=False, static_shapes=False))
        if static_shapes is None:
            static_shapes = training.use_xla_for_run(
                self, epochs * steps_per_epoch, bucket_boundaries, budget, pack
            )
        if validation_data is not None:
            validation_texts = text.as_texts(
                "validation_data", *text.validation_pair(validation_data)
            )
            if validation_texts is None:
                text.check_model_data("validation_data", validation_data, "fit")
            else:
                validation_data = self.make_dataset(
                    *validation_texts,
                    batch_size=batch_size,
                    shuffle=False,
                    static_shapes=static_shapes,
                    tokens_per_batch=tokens_per_batch,
                    bucket_boundaries=bucket_boundaries,
                    pack=pack,
                )

        training.fit_schedule_to_run(self, epochs * steps_per_epoch)
        # Tokens per second and compile time in the progress line and the
        # history. An epoch of the stream holds more tokens than one pass
        # over the pairs: its batches are all full.
        speed = callbacks.TrainingSpeed(
            *(
                max(1, round(tokens * steps_per_epoch))
                for tokens in self._stream_tokens_per_batch(
                    pairs,
                    batch_size,
                    shuffle,
                    seed,
                    tokens_per_batch,
                    bucket_boundaries,
                    pack,
                )
            )
        )
        kwargs["callbacks"] = [speed, *(kwargs.get("callbacks") or [])]
        if checkpoint_dir is None:
            # Under a multi-worker strategy a lost worker becomes an error
            # that says what to do, not TensorFlow's raw UnavailableError.
            with distribute.explain_lost_worker(
                self.distribute_strategy, "Rerun every worker."
            ):
                # One endless stream, `steps_per_epoch` batches an epoch:
                # Keras keeps its iterator across epochs. Given a finite
                # dataset it makes a new one every epoch, and each epoch's
                # first step then waited 0.3-20 s on 2 CPU cores (what
                # `minutes` counts and a short run cannot spare).
                return super().fit(
                    make_training_dataset(repeat=True, static_shapes=static_shapes),
                    epochs=epochs,
                    steps_per_epoch=steps_per_epoch,
                    validation_data=validation_data,
                    # The dataset shuffles itself.
                    shuffle=False,
                    **kwargs,
                )
        from keras_transformer import checkpointing

        return checkpointing.fit_resumable(
            self,
            lambda: make_training_dataset(repeat=True, static_shapes=static_shapes),
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            directory=checkpoint_dir,
            save_every_steps=checkpoint_every or steps_per_epoch,
            validation_data=validation_data,
            shuffle=False,
            **kwargs,
        )

    def evaluate(self, x=None, y=None, batch_size=None, static_shapes=False, **kwargs):
        """`keras.Model.evaluate` on texts (as in `fit`) or on ids."""
        texts = text.as_texts("x", x, y)
        if texts is None:
            text.check_model_data("x", x, "evaluate")
            return super().evaluate(x, y, batch_size=batch_size, **kwargs)
        dataset = self.make_dataset(
            *texts,
            batch_size=64 if batch_size is None else batch_size,
            shuffle=False,
            static_shapes=static_shapes,
        )
        return super().evaluate(dataset, **kwargs)

    # Decoding ----------------------------------------------------------------

    def generate(self, source_ids, method="greedy", max_length=None, seed=None, **options):
        """Generates target ids for source ids.

        Args:
            source_ids: int array `(batch, source_length)`, padded with the
                padding id.
            method: `"greedy"`, `"beam"` or `"sample"`.
            max_length: int or None. Tokens generated at most, EOS
                included (default: the model's maximum target length).
            seed: int or None. Seed of `method="sample"` (None: a new
                random seed every call).
            **options: the sampler's options: `beam_size`, `length_penalty`,
                `num_results`, `return_scores` for beam search;
                `temperature`, `top_k`, `top_p` for sampling.

        Returns:
            int32 NumPy ids `(batch, max_length)` (no BOS; EOS, then padding,
            after the text); beam search with `num_results` gives
            `(batch, n, max_length)`, and with `return_scores=True` a pair
            `(ids, scores)`.
        """
        decode = self._decoder("ids", method, max_length, False, options)
        source_ids = self._check_source_ids(source_ids)
        outputs = decode(source_ids, _seed_tensor(seed))
        return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)

    def _check_source_ids(self, source_ids):
        """`source_ids` as an int32 `(batch, source_length)` array that fits
        the model, or a `ValueError` naming it."""
        expected = (
            "expected an int array of shape (batch, source_length), padded "
            f"with padding_id={self.padding_id}"
        )
        try:
            source_ids = np.asarray(source_ids)
        except ValueError:
            raise ValueError(
                f"Received an invalid value for argument source_ids, {expected}; "
                "received rows of different lengths. Pad them, e.g. "
                "tokenizer.tokenize(texts).to_tensor()."
            ) from None
        if source_ids.ndim != 2:
            raise ValueError(
                f"Received an invalid value for argument source_ids, {expected}. "
                f"Received shape {source_ids.shape}"
                + (": wrap one sequence in a list, [ids]." if source_ids.ndim == 1 else ".")
            )
        if source_ids.shape[1] > self.max_source_length:
            raise ValueError(
                f"Received source_ids of length {source_ids.shape[1]}, more "
                "than the model's maximum source length of "
                f"{self.max_source_length}. Sources are never truncated: "
                "split long texts."
            )
        if source_ids.dtype.kind not in "iu":
            raise ValueError(
                "Received an invalid value for argument source_ids, expected "
                f"integer token ids. Received dtype {source_ids.dtype}."
            )
        # Checked before the int32 cast, which would wrap an int64 id around.
        _token_ids.check_values(
            "source_ids", source_ids, self.transformer_layers.source_vocabulary_size
        )
        return source_ids.astype("int32")

    def translate(
        self,
        texts,
        method="greedy",
        max_length=None,
        batch_size=DEFAULT_TRANSLATE_BATCH_SIZE,
        jit_compile=False,
        seed=None,
        **options,
    ):
        """Translates texts.

        Args:
            texts: list of str (a single str is refused: wrap it in a list).
            method: `"greedy"`, `"beam"` or `"sample"`.
            max_length: int or None. Tokens generated at most per text.
            batch_size: int. Texts decoded at once.
            jit_compile: bool. Decode as an XLA program with every batch
                padded to `(batch_size, max_source_length)`: one compile,
                then fixed shapes (what TPUs need, faster on GPUs).
            seed: int or None. Seed of `method="sample"`; a given seed gives
                the same translations every call.
            **options: the sampler's options (see `generate`); for beam
                search `num_results` and `return_scores` are not available
                here (use `generate`).

        Returns:
            list of str, in the order of `texts`. An empty text translates
            to `""`.

        Raises:
            ValueError: a text has more tokens than the model's maximum
                source length (texts are never truncated), or bad options.
        """
        texts = text.check_texts("texts", texts)
        batch_size = validation.check_positive_int("batch_size", batch_size)
        if not isinstance(jit_compile, bool):
            raise ValueError(
                "Received an invalid value for argument jit_compile, expected "
                f"a bool. Received: jit_compile={jit_compile!r}"
            )
        for option in ("num_results", "return_scores"):
            if options.get(option):
                raise ValueError(
                    f"translate returns one string per text; {option} is for "
                    "generate(). Received: "
                    f"{option}={options[option]!r}"
                )
        decode = self._decoder("texts", method, max_length, jit_compile, options)
        seed_tensor = _seed_tensor(seed)
        translations = []
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            if jit_compile:
                # Padding rows keep the batch size, hence the XLA program.
                batch = batch + [""] * (batch_size - len(batch))
            try:
                outputs = decode(tf.constant(batch, tf.string), seed_tensor)
            except tf.errors.InvalidArgumentError as error:
                # The graph's own words, without TensorFlow's trace around them.
                check = re.search(r"assertion failed: \[(.*?)\] \[", error.message, re.S)
                raise ValueError(
                    f"Cannot translate texts {start}..{start + len(batch) - 1}: "
                    + (check.group(1).replace("\\'", "'") if check else error.message)
                ) from None
            translations.extend(
                encoded.decode("utf-8") for encoded in outputs.numpy()[: len(texts) - start]
            )
        return translations

    def _decoder(self, kind, method, max_length, jit_compile, options):
        """The compiled decoding function of one setting, built once."""
        sampler = decoding.get_sampler(method, **options)
        if max_length is None:
            max_length = self.max_target_length
        max_length = validation.check_positive_int("max_length", max_length)
        key = (kind, type(sampler).__name__, tuple(sorted(sampler.get_config().items())),
               max_length, jit_compile)
        if key in self._decoders.functions:
            return self._decoders.functions[key]
        special_ids = {
            "bos_id": self.target_tokenizer.bos_id,
            "eos_id": self.target_tokenizer.eos_id,
        }

        def decode(source_ids, seed):
            return sampler(self, source_ids, max_length, seed=seed, **special_ids)

        seed_spec = tf.TensorSpec([2], tf.int64, name="seed")
        if kind == "ids":
            function = tf.function(
                decode,
                input_signature=[tf.TensorSpec([None, None], tf.int32), seed_spec],
                autograph=False,
            )
        else:
            if jit_compile:
                decode = tf.function(decode, jit_compile=True, autograph=False)
            function = tf.function(
                text.text_decoder(
                    self,
                    self.source_tokenizer,
                    self.target_tokenizer,
                    decode,
                    pad_to_max_source_length=jit_compile,
                ),
                input_signature=[tf.TensorSpec([None], tf.string), seed_spec],
                autograph=False,
            )
        self._decoders.functions[key] = function
        return function

    def attention_scores(self, texts, layer=-1, max_length=None):
        """Cross-attention of one decoder block while translating greedily.

        Args:
            texts: list of non-empty str.
            layer: int. Decoder block (negative counts from the last).
            max_length: int or None. Tokens generated at most.

        Returns:
            list of `AttentionMap`, one per text: `source_tokens`,
            `target_tokens` (the generated tokens, EOS included) and
            `scores`, float32 `(num_heads, len(target_tokens),
            len(source_tokens))`; row `t` is the step that produced target
            token `t`.
        """
        return attention.attention_scores(
            self, texts, layer=layer, max_length=max_length
        )

    # Saving and export --------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "source_tokenizer": tokenizers.serialize_tokenizer(self.source_tokenizer),
            "target_tokenizer": tokenizers.serialize_tokenizer(self.target_tokenizer),
            **adapters_lib.get_config(self),
        }

    @classmethod
    def from_config(cls, config):
        if "backbone" not in config:
            raise ValueError(
                "Received a Translator config of the first layout, without "
                "'backbone': it was written while the Translator was its "
                "Transformer (keras_transformer before the Translator held "
                "one), and a .keras file of that version keeps the weights "
                "where that layout put them, which keras.saving.load_model "
                "cannot place. Load the file with "
                "keras_transformer.models.load_model(path), which upgrades "
                "it as it loads (the file is left as it is), and save it "
                "again to write the current layout."
            )
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)

    @classmethod
    def upgrade_keras_file(cls, config):
        """How `keras_transformer.models.load_model` reads a `.keras` file of
        the first layout, where the Translator was its Transformer.

        Args:
            config: dict, the Translator config in the file.

        Returns:
            None for a file of the current layout; else `(config, moves)`:
            the config with its network fields as a `backbone`, and the
            `(old, new)` paths of the weight groups to move in the file's
            `model.weights.h5` (`layout.FIRST_LAYOUT_MOVES`).
        """
        return layout.upgrade_first_layout(config)

    def export(
        self,
        path,
        version=None,
        max_decode_length=None,
        beam_size=4,
        length_penalty=0.6,
        jit_compile=False,
        merge_adapter=None,
    ):
        """Exports a SavedModel for TensorFlow Serving into `path/<version>/`.

        The export translates strings with TensorFlow alone (plus
        `tensorflow_text` for SentencePiece tokenizers): `serving_default`
        takes `{"texts": tf.string [batch]}` and returns
        `{"translations": tf.string [batch]}`; `translate_beam` decodes with
        beam search and `serve` maps ids to logits (see
        `keras_transformer.translation.export`). Written atomically; an
        existing version is never overwritten.

        Serve it with
        `tensorflow_model_server --rest_api_port=8501 --model_name=translator
        --model_base_path=/abs/path` and query
        `POST /v1/models/translator:predict` with
        `{"instances": ["a text", "another"]}`.

        With adapters, `serving_default` takes `{"texts", "adapter"}` (an
        adapter name per text, `""` for the base) and the other endpoints
        serve the base (see `keras_transformer.translation.export`); with
        `merge_adapter=name` the export is of `merge_adapter(name)`: one
        adapter at the base's cost, the signatures of a plain export.

        Args:
            path: str. The model's base folder (holding version folders).
            version: int or None. The version folder; None takes the next
                integer after the largest existing one (1 for a new folder).
            max_decode_length, beam_size, length_penalty, jit_compile: see
                `keras_transformer.translation.export.export_translator`.
            merge_adapter: str or None. Export this adapter merged.

        Returns:
            str, the version folder written.
        """
        if merge_adapter is not None:
            return self.merge_adapter(merge_adapter).export(
                path, version, max_decode_length, beam_size, length_penalty, jit_compile
            )
        target = export.new_version_folder(path, version)
        export.export_translator(
            self,
            self.source_tokenizer,
            self.target_tokenizer,
            target,
            max_decode_length=max_decode_length,
            beam_size=beam_size,
            length_penalty=length_penalty,
            jit_compile=jit_compile,
            adapters=adapters_lib.export_adapters(self),
        )
        return target


class _DecoderCache:
    """Compiled decoding functions by setting. A plain object, so Keras and
    TensorFlow do not try to track (and save) the functions."""

    def __init__(self):
        self.functions = {}


def _seed_tensor(seed):
    """The `(2,)` int64 seed of a call: drawn at random when None."""
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31))
    validation.check_non_negative_int("seed", seed)
    return tf.constant([seed, 0], tf.int64)

