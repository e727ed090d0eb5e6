"""Training recipes: everything besides the data that makes a good run.

A `Recipe` names the tokenizer, the model's `TransformerConfig` fields, the
optimizer schedule, the batches, the length of training, what is evaluated
and averaged during it, and the decoding used for the final scores.
`scripts/train.py` takes `DATE_TASK` for the built-in date task and `CORPUS`
for a real parallel corpus; its flags override single fields
(`Recipe.override`). From Python a recipe applies itself:

```python
recipe = recipes.CORPUS
translator = recipe.translator_from_texts(sources, targets)
# The schedule follows the run `fit` makes (warm-up, cosine decay to 0 at
# its last step); XLA is turned on, with static shapes, when it repays.
recipe.compile(translator)
translator.fit(sources, targets,
               **recipe.fit_options(translator, valid_sources, valid_targets))
translator.translate(test_sources, **recipe.translate_options())
```
"""

import collections.abc
import dataclasses
import functools
import math
import types
import typing

import keras

from keras_transformer import distribute, schedules, validation
from keras_transformer.models.transformer import TransformerConfig
from keras_transformer.translation import translator as translator_lib
from keras_transformer.translation import vocabulary

# The tokenizer kinds a Recipe or `scripts/train.py --tokenizer` may name:
# those `Translator.from_texts` trains.
TOKENIZERS = vocabulary.TOKENIZERS
# Length buckets of `Recipe.bucket_boundaries`, at most: one XLA program each.
MAX_BUCKETS = 8
# What `Recipe.precision` (and `scripts/train.py --precision`) may name:
# "auto" or a Keras dtype policy of the layers.
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to train and decode a translator, apart from the data.

    Args:
        tokenizer: `"character"`, `"word"` or `"sentencepiece"`.
        vocabulary_size: int or None. Per tokenizer (or of the joint one);
            None leaves character and word vocabularies uncapped.
        joint_vocabulary: bool. One tokenizer and embedding for both sides.
        model: mapping of `TransformerConfig` fields (not the vocabulary
            sizes or `padding_id`, which come from the tokenizers). Checked
            when the recipe is made, as a `TransformerConfig` with
            placeholder vocabulary sizes; so are the tokenizer settings.
        learning_rate: float or None. Peak Adam learning rate, for the
            recipe's model width (`override` moves it to another width);
            None takes `schedules.default_learning_rate` of the model's
            width.
        warmup_steps: int or None. Linear warm-up steps; None warms up for
            `warmup_fraction` of the run, whatever its length.
        label_smoothing: float.
        epochs: int or None. Passes over the training pairs; the learning
            rate decays to 0 at the end of the last (cosine). With `minutes`
            an upper bound (None: no bound).
        warmup_fraction: float in (0, 1) or None. The warm-up's share of
            the run when `warmup_steps` is None; None: 5%.
        minutes: float or None. Train for this many minutes of wall time
            instead (`Translator.fit(minutes=...)`, validation included):
            the schedule is fitted to the steps the budget holds on the
            machine at hand, so the recipe serves any corpus size and any
            machine.
        batch_size: int or None. Pairs per batch and replica, when
            batches are not sized by `tokens_per_batch`.
        tokenizer_options: mapping of further `from_texts` arguments of the
            tokenizer (e.g. SentencePiece's `model_type`).
        tokens_per_batch: int or None. Batch by token count instead
            (`make_translation_dataset(tokens_per_batch=...)`); takes
            precedence over `batch_size`.
        bucket_width: int or None. Width of the length buckets (see
            `bucket_boundaries`); None keeps the pipeline's 8 equal buckets.
        pack: bool. Pack several pairs to a row instead of bucketing them
            (`Translator.fit(pack=True)`): two batch shapes at most and
            almost no padding. Needs `tokens_per_batch`; `bucket_width` is then
            unused.
        checkpoints_averaged: int. Weight snapshots averaged at the end of
            training (`CheckpointAveraging`); 1 keeps the last weights.
        average_every_n_steps: int or None. Steps between those snapshots;
            None takes one per epoch.
        bleu_every_n_epochs: int or None. Validation BLEU during training
            (`BleuEvaluation`, greedy); None skips it.
        beam_size: int. Beams of the final scores; 1 is greedy.
        length_penalty: float. GNMT length-penalty exponent of beam search.
        precision: str or None. The layers' dtype policy (`PRECISIONS`):
            `"auto"` is `"mixed_bfloat16"` where the model trains on CPUs
            that multiply bfloat16 natively (AVX512-BF16 or AMX, with
            TensorFlow: a step about 1.2x faster than float32 under XLA)
            and Keras' global policy elsewhere; None is always the global
            policy.
    """

    tokenizer: str
    vocabulary_size: typing.Optional[int]
    joint_vocabulary: bool
    model: types.MappingProxyType
    learning_rate: typing.Optional[float]
    warmup_steps: typing.Optional[int]
    label_smoothing: float
    epochs: typing.Optional[int]
    batch_size: typing.Optional[int]
    tokenizer_options: types.MappingProxyType = dataclasses.field(default_factory=dict)
    tokens_per_batch: typing.Optional[int] = None
    bucket_width: typing.Optional[int] = None
    checkpoints_averaged: int = 1
    average_every_n_steps: typing.Optional[int] = None
    bleu_every_n_epochs: typing.Optional[int] = None
    beam_size: int = 1
    length_penalty: float = 0.6
    minutes: typing.Optional[float] = None
    warmup_fraction: typing.Optional[float] = None
    pack: bool = False
    precision: typing.Optional[str] = None

    def __post_init__(self):
        # Checked now against what `from_texts` will do with them, so a bad
        # recipe fails where it is written, not after the corpus is read.
        vocabulary.check_tokenizer_arguments(
            self.tokenizer, self.vocabulary_size, self.tokenizer_options
        )
        validation.check_bool("joint_vocabulary", self.joint_vocabulary)
        translator_lib.check_model_fields(self.model)
        # Frozen mappings, so a shared recipe cannot be changed in place.
        for field in ("model", "tokenizer_options"):
            object.__setattr__(
                self, field, types.MappingProxyType(dict(getattr(self, field)))
            )
        validation.check_positive_float(
            "learning_rate", self.learning_rate, allow_none=True
        )
        if self.warmup_steps is not None:
            validation.check_non_negative_int("warmup_steps", self.warmup_steps)
        if self.warmup_fraction is not None:
            validation.check_fraction("warmup_fraction", self.warmup_fraction)
        validation.check_rate("label_smoothing", self.label_smoothing)
        validation.check_positive_int("epochs", self.epochs, allow_none=True)
        validation.check_positive_float("minutes", self.minutes, allow_none=True)
        if self.epochs is None and self.minutes is None:
            raise ValueError(
                "A recipe needs epochs or minutes (the length of its run). "
                "Received: epochs=None, minutes=None"
            )
        validation.check_positive_int("batch_size", self.batch_size, allow_none=True)
        validation.check_positive_int(
            "tokens_per_batch", self.tokens_per_batch, allow_none=True
        )
        if self.batch_size is None and self.tokens_per_batch is None:
            raise ValueError(
                "A recipe needs batch_size or tokens_per_batch; both are None."
            )
        validation.check_positive_int("bucket_width", self.bucket_width, allow_none=True)
        if validation.check_bool("pack", self.pack) and self.tokens_per_batch is None:
            raise ValueError(
                "A recipe with pack=True sizes its batches by tokens: give "
                "it tokens_per_batch. Received: pack=True, tokens_per_batch=None"
            )
        validation.check_positive_int("checkpoints_averaged", self.checkpoints_averaged)
        validation.check_positive_int(
            "average_every_n_steps", self.average_every_n_steps, allow_none=True
        )
        validation.check_positive_int(
            "bleu_every_n_epochs", self.bleu_every_n_epochs, allow_none=True
        )
        validation.check_positive_int("beam_size", self.beam_size)
        validation.check_non_negative_float("length_penalty", self.length_penalty)
        validation.check_choice("precision", self.precision, (None, *PRECISIONS))

    def override(self, **changes):
        """A copy of the recipe with some fields changed, checked again.

        As `dataclasses.replace`, with three differences that make a flag
        or a tweak change only what it names: `model` fields update the
        recipe's (the others are kept); a different `tokenizer` drops the
        recipe's `tokenizer_options`, which fit its own tokenizer only
        (unless new ones are given); and a different `hidden_dim` moves the
        recipe's `learning_rate`, tuned for its own width, to the new one
        (`schedules.learning_rate_for_width`: half the rate at twice the
        width), unless a `learning_rate` is given too.

        Args:
            **changes: `Recipe` fields and their new values.

        Returns:
            A new `Recipe`; this one is unchanged (it is frozen).

        Example:

        ```python
        small = recipes.CORPUS.override(tokenizer="word", epochs=2,
                                        model={"hidden_dim": 64})
        small.model["num_encoder_layers"]  # 2, the corpus recipe's
        small.tokenizer_options  # {}: SentencePiece's options are dropped
        small.learning_rate  # 0.01: the recipe's 2.5e-3 at width 256, moved to 64
        ```
        """
        if isinstance(changes.get("model"), collections.abc.Mapping):
            changes["model"] = {**self.model, **changes["model"]}
            width, new_width = (
                model.get("hidden_dim", TransformerConfig.hidden_dim)
                for model in (self.model, changes["model"])
            )
            if (
                new_width != width
                and self.learning_rate is not None
                and "learning_rate" not in changes
            ):
                changes["learning_rate"] = schedules.learning_rate_for_width(
                    self.learning_rate, width, new_width
                )
        if changes.get("tokenizer", self.tokenizer) != self.tokenizer:
            changes.setdefault("tokenizer_options", {})
        return dataclasses.replace(self, **changes)

    def translator_from_texts(self, sources, targets, dtype=None, name="translator"):
        """Trains the recipe's tokenizers on a corpus and builds its model.

        Under a `tf.distribute` strategy, call it (and `compile`) in the
        strategy's scope.

        Args:
            sources: list of str. Training source texts.
            targets: list of str. Their translations.
            dtype: optional dtype policy of the layers (e.g.
                `"mixed_bfloat16"`); None: the recipe's `precision` (see
                `dtype_policy`).
            name: str. The model's name.

        Returns:
            A `Translator` (not yet compiled: see `compile`) with the
            recipe's tokenizer, vocabulary and `model` fields.

        Example:

        ```python
        translator = recipes.DATE_TASK.translator_from_texts(sources, targets)
        translator.config.hidden_dim  # 64
        ```
        """
        return translator_lib.Translator.from_texts(
            sources,
            targets,
            tokenizer=self.tokenizer,
            vocabulary_size=self.vocabulary_size,
            joint_vocabulary=self.joint_vocabulary,
            tokenizer_options=dict(self.tokenizer_options),
            dtype=self.dtype_policy() if dtype is None else dtype,
            name=name,
            **self.model,
        )

    def dtype_policy(self):
        """The layers' dtype policy that `precision` names here: a policy
        name, or None for Keras' global policy. Under a `tf.distribute`
        strategy, call it in the strategy's scope ("auto" asks where it
        trains).

        Example:

        ```python
        recipes.CORPUS.dtype_policy()  # "mixed_bfloat16" on an AVX512-BF16 CPU
        ```
        """
        if self.precision != "auto":
            return self.precision
        if keras.backend.backend() == "tensorflow" and distribute.trains_on_bfloat16_cpus():
            return "mixed_bfloat16"
        return None

    def compile(self, translator, **options):
        """Compiles `translator` with the recipe's optimizer and loss.

        Adam on a warm-up then cosine decay schedule peaking at
        `learning_rate` (warm-up `warmup_steps`), and the masked
        cross-entropy with `label_smoothing` (`Translator.compile`). With no
        `total_steps` the schedule follows the run the next `fit` makes.

        Args:
            translator: a `Translator`.
            **options: further `Translator.compile` arguments (e.g.
                `jit_compile`, `total_steps`, `steps_per_execution`).

        Returns:
            `translator`, compiled.

        Example:

        ```python
        translator = recipe.compile(recipe.translator_from_texts(sources, targets))
        ```
        """
        translator.compile(
            learning_rate=self.learning_rate,
            warmup_steps=self.warmup_steps,
            warmup_fraction=self.warmup_fraction,
            label_smoothing=self.label_smoothing,
            **options,
        )
        return translator

    def fit_options(self, translator, valid_sources=None, valid_targets=None):
        """Keyword arguments of `Translator.fit` for the recipe's run.

        Args:
            translator: the `Translator` to train (made in the scope of the
                strategy it trains under, whose replicas multiply the
                batch).
            valid_sources: list of str or None. Held-out sources for the
                validation BLEU (see `callbacks`).
            valid_targets: list of str or None. Their references.

        Returns:
            A dict: `epochs` and `minutes`; `batch_size` and `tokens_per_batch`, the
            recipe's per replica times the replicas (batches by tokens when
            `tokens_per_batch` is set); `pack`, or else `bucket_boundaries`
            for the translator's longest sequences; and `callbacks`, the recipe's,
            whose validation BLEU decodes greedily as one XLA program
            (several times faster than the traced loop once compiled).

        Example:

        ```python
        history = translator.fit(sources, targets, seed=0,
                                 **recipe.fit_options(translator))
        ```
        """
        replicas = translator.distribute_strategy.num_replicas_in_sync
        longest = max(translator.max_source_length, translator.max_target_length)
        decode_fn = functools.partial(translator.translate, jit_compile=True)
        return {
            "epochs": self.epochs,
            "minutes": self.minutes,
            "batch_size": self.batch_size and self.batch_size * replicas,
            "tokens_per_batch": self.tokens_per_batch and self.tokens_per_batch * replicas,
            "pack": self.pack,
            "bucket_boundaries": None if self.pack else self.bucket_boundaries(longest),
            "callbacks": self.callbacks(decode_fn, valid_sources, valid_targets),
        }

    def bucket_boundaries(self, longest):
        """Length-bucket boundaries for sequences of up to `longest` tokens.

        The first bucket holds lengths up to `2 * bucket_width`; each next
        one is `bucket_width` or a quarter wider, whichever is more, so a
        batch is padded by at most about a fifth of its length; the eighth
        holds everything longer (the rare long tail), since under XLA each
        bucket costs a compilation (15-30 s on 2 CPU cores). None (no
        `bucket_width`) lets the pipeline choose.
        """
        validation.check_positive_int("longest", longest)
        if self.bucket_width is None:
            return None
        boundaries = [1 + 2 * self.bucket_width]
        while len(boundaries) < MAX_BUCKETS - 1:
            top = boundaries[-1] - 1
            following = 1 + max(top + self.bucket_width, math.ceil(top * 1.25))
            if following > longest:
                break
            boundaries.append(following)
        return boundaries if boundaries[0] <= longest else []

    def translate_options(self):
        """Keyword arguments of `Translator.translate` for the final scores."""
        if self.beam_size == 1:
            return {"method": "greedy"}
        return {
            "method": "beam",
            "beam_size": self.beam_size,
            "length_penalty": self.length_penalty,
        }

    def callbacks(self, decode_fn, valid_sources=None, valid_targets=None):
        """The recipe's training callbacks.

        Args:
            decode_fn: callable from a list of texts to their translations
                (e.g. `translator.translate`), for the validation BLEU.
            valid_sources: list of str or None. Held-out sources.
            valid_targets: list of str or None. Their references.

        Returns:
            A list: `BleuEvaluation` every `bleu_every_n_epochs` epochs when
            held-out texts are given, then `CheckpointAveraging` when more
            than one checkpoint is averaged (after the evaluation, which
            thus scores the current weights).
        """
        from keras_transformer import callbacks

        if (valid_sources is None) != (valid_targets is None):
            raise ValueError(
                "valid_sources and valid_targets go together: pass both "
                "(held-out texts and their references) or neither. Received: "
                f"{'valid_targets' if valid_targets is None else 'valid_sources'}=None"
            )
        result = []
        if self.bleu_every_n_epochs and valid_sources:
            result.append(
                callbacks.BleuEvaluation(
                    decode_fn,
                    valid_sources,
                    valid_targets,
                    every_n_epochs=self.bleu_every_n_epochs,
                )
            )
        if self.checkpoints_averaged > 1:
            result.append(
                callbacks.CheckpointAveraging(
                    self.checkpoints_averaged, every_n_steps=self.average_every_n_steps
                )
            )
        return result


# The date task: 20k generated pairs, exact match >= 99% in ~80 s on 2 CPU
# cores (the defaults scripts/train.py had before recipes existed). Characters
# are the natural unit of dates; a small model suffices, and dropout or label
# smoothing only slow down learning a deterministic mapping. Cosine decay to
# 0 settles the weights at the end of a short run (the inverse square root
# left exact match swinging 94-100%).
# The held-out exact match a default run of the date task must reach.
DATE_TASK_TARGET = 0.99
DATE_TASK = Recipe(
    tokenizer="character",
    vocabulary_size=None,
    joint_vocabulary=False,
    model={
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "hidden_dim": 64,
        "num_heads": 4,
        "intermediate_dim": 256,
        "dropout": 0.0,
    },
    learning_rate=5e-3,
    # 5% of the run (about 80 of its 1565 steps).
    warmup_steps=None,
    label_smoothing=0.0,
    epochs=5,
    batch_size=64,
)

# Real corpora: a shallow, wide model with joint subword units, trained for
# half an hour (docs/quality.md has what it reaches on Multi30k with 2 CPU
# cores). The run is a time budget, not a number of epochs, so the schedule
# fits any corpus of 10k-1M pairs and any machine: `override(minutes=...)`
# (train.py `--minutes`) for another budget.
CORPUS = Recipe(
    tokenizer="sentencepiece",
    # Joint unigram model: one vocabulary for both languages lets names and
    # numbers be copied, and shares the embeddings. On a CPU the output
    # softmax is a large part of a small model's step (for d 128, 8000
    # pieces: about half the step time; 4000: a third), and halving the
    # vocabulary lengthens sentences by only ~10%.
    vocabulary_size=4000,
    joint_vocabulary=True,
    tokenizer_options={"model_type": "unigram", "character_coverage": 1.0},
    # Two layers a side, d 256, rather than fairseq's transformer_tiny (4+4,
    # d 128, FFN 256: the recipe before this one). On 2 CPU cores a step
    # costs about 1.5x as much (10.5 epochs of Multi30k in half an hour
    # instead of 12.3) but learns far more, and XLA compiles its 8 bucket
    # programs in half the time (91 s instead of 193 s): test_2016_flickr
    # beam BLEU 37.5 lowercased after 30 minutes against 34.9, validation
    # BLEU 18.6 after 7.5 minutes against 11.8 after 8.3. On word-level
    # de->en, 10 minutes: masked accuracy 0.645 against 0.541; on its first
    # 5,000 pairs, 5 minutes: 0.450 against 0.335. Against keras-hub's
    # translation example at equal wall time (10 minutes of fit, packed
    # rows): 0.552 against 0.451 on en->de subwords (0.604 in
    # mixed_bfloat16, below), 0.650 against 0.590 on de->en words (README).
    model={
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "hidden_dim": 256,
        "num_heads": 8,
        "intermediate_dim": 1024,
        # fairseq uses 0.3 for transformer_tiny, over ~150 epochs; a run of
        # a dozen epochs barely overfits, and 0.3 slowed it down (Multi30k
        # validation BLEU after 2 epochs, 4+4 d 128: 1.1 with 0.3, 2.8 with
        # 0.1).
        "dropout": 0.1,
        # No dropout on the attention weights, as in fairseq's transformer
        # (its attention_dropout defaults to 0) and Vaswani et al.'s base
        # model.
        # Without XLA (the mixed_bfloat16 path) a dropout mask costs a dozen
        # unfused passes over its tensor, and the attention weights' tensor
        # grows with the packed row's length: on 2 CPU cores, mixed_bfloat16,
        # a 64 x 32 step ran 5,561 target tokens/s with attention dropout
        # and 5,867 without (128 x 16: 5,965 and 5,911).
        "attention_dropout": 0.0,
    },
    # fairseq's 5e-3 for width 128 (pre-norm blocks train stably at it),
    # moved to width 256 (`schedules.learning_rate_for_width`).
    learning_rate=2.5e-3,
    # 15% of the run (about 450 steps of a half hour on 2 CPU cores). On
    # Multi30k (4+4 d 128), 5% learnt faster in the first epoch and ended worse:
    # validation BLEU after epochs 1-4 of 11 was 5.4, 7.7, 11.2, 15.7 with 5%
    # and 3.1, 11.7, 19.1, 21.0 with 15%.
    warmup_steps=None,
    warmup_fraction=0.15,
    label_smoothing=0.1,
    # Half an hour of `fit`'s wall time, compiling and validation included;
    # `fit` turns XLA on for a budget this long.
    epochs=None,
    minutes=30,
    # For callers that batch by pairs: about 2048 tokens of Multi30k.
    batch_size=64,
    # Small batches give more updates per CPU second, which short runs need
    # more than large-batch efficiency.
    tokens_per_batch=2048,
    # Several pairs to a row: 96% of Multi30k's target positions are real
    # tokens (length buckets: about 72%), in rows of two lengths, so two
    # XLA programs where XLA is on (one took 26 s to compile; 8 buckets
    # took 91 s). In rows of one length (72), for the same 30
    # minutes of training steps: validation BLEU 12.0 after 3.6 minutes and
    # 23.1 after 7.1 (buckets: 7.0 after 4.5, 18.6 after 7.5);
    # test_2016_flickr beam 37.5 / 37.1 both ways, greedy 36.8 / 36.4
    # against 36.1 / 35.7. In 30 minutes of wall time, validation included:
    # beam 38.2 / 37.8, greedy 37.4 / 37.0 (validation BLEU 11.9 after 2.5
    # minutes).
    pack=True,
    # Buckets 4 tokens wide for short sentences, a quarter wider for long
    # ones, when packing is turned off (`override(pack=False)`).
    bucket_width=4,
    # The tail of the cosine decay, averaged (fairseq averages the last 10
    # epochs of 150; a run of a dozen epochs averages within the last one).
    checkpoints_averaged=5,
    average_every_n_steps=100,
    bleu_every_n_epochs=1,
    beam_size=5,
    length_penalty=0.6,
    # bfloat16 matrix products where the CPU multiplies bfloat16 natively
    # (oneDNN; `fit` then leaves XLA off, which would be slower): on 2 AMD
    # EPYC cores with AVX512-BF16, a packed 28 x 72 step ran 4,803 target
    # tokens/s against 3,988 in float32 under XLA, 4,121 in bfloat16 under
    # XLA. Half an hour of Multi30k: 12.3 epochs instead of 11.5,
    # test_2016_flickr beam 38.7 / 38.4 against 38.2 / 37.8 (rows of one
    # length, attention dropout 0.1; with rows of two lengths and no
    # attention dropout, 14 epochs and beam 39.1 / 38.6).
    precision="auto",
)
