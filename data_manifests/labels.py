"""Standard label spaces, each in the class order the field's shared pickles use (formats.md G).

Keeping one order per corpus means a head trained here and a legacy pickle agree on what index 3 is.
"""

from __future__ import annotations

from .manifest import LabelSpace

# conv-emotion / COSMIC / DialogueRNN / Ada2I order.
MELD_EMOTION = LabelSpace("emotion", "categorical",
                          ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"))
MELD_SENTIMENT = LabelSpace("sentiment", "categorical", ("neutral", "positive", "negative"))

# conv-emotion / COGMEN / COSMIC / MERBench 6-way order, with the IEMOCAP consensus codes as names.
IEMOCAP_6 = LabelSpace("emotion", "categorical", ("hap", "sad", "neu", "ang", "exc", "fru"))
# 4-way: COGMEN / MERBench order. In the SER protocol ("4-ser") exc is merged into hap.
IEMOCAP_4 = LabelSpace("emotion", "categorical", ("hap", "sad", "neu", "ang"))
IEMOCAP_VAD = {name: LabelSpace(name, "regression", (), (1.0, 5.0)) for name in ("valence", "arousal", "dominance")}

MOS_SENTIMENT = LabelSpace("sentiment", "regression", (), (-3.0, 3.0))
MOSEI_EMOTIONS = LabelSpace("emotions", "multilabel", ("happy", "sad", "anger", "surprise", "disgust", "fear"))
