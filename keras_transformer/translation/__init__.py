"""The text task: texts in, texts out, on top of the backbone and decoding.

The top floor of the package (imports run layers -> models -> decoding ->
translation, never back):

- `translator`: the `Translator`, which holds a `Transformer` (its
  `backbone`) and its tokenizers, and owns its training recipe, decoding,
  saving and export;
- `text`: the tokenize -> pad -> decode -> detokenize path that the
  Translator and its export share, and the checks of its text arguments;
- `vocabulary`: the tokenizer kinds the Translator trains, and training them;
- `training`: the decisions of a training run (the recipe's optimizer, the
  schedule fitted to `fit`, XLA, the time budget);
- `attention`: the Translator's attention analysis;
- `layout`: reading a `.keras` file of the Translator's first layout;
- `adapters`: the Translator's named LoRA adapters;
- `export`: the self-contained SavedModel of a Translator;
- `recipes`: the training recipes (`DATE_TASK`, `CORPUS`), which apply
  themselves to a translator;
- `flags`: the recipes and the training data as command-line flags;
- `run_record`: a training run as JSON;
- `adapter_training`: the adapter path of `scripts/train.py`.

Everything here needs TensorFlow (the tokenizers run in its graphs): imported
without it, the package says what to install. The Translator's registered
Keras name, `keras_transformer>Translator`, is the one it had in
`keras_transformer.models`, so `.keras` files saved before load.
"""

from keras_transformer._tensorflow import import_tensorflow

import_tensorflow(__name__)

from keras_transformer.translation.translator import Translator  # noqa: E402,F401
