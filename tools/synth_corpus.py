"""Small synthetic MELD and IEMOCAP corpora spoken by espeak-ng, in the real on-disk layouts.

Why: the real corpora are licensed and large, but adapters, extraction and heads need end-to-end tests
on real files. Emotion here is readable from three independent sources, so a test can tell which one
a model uses: the words (only in a `text_signal` fraction of utterances), the prosody (per-emotion
espeak pitch, rate and amplitude), and the context (each speaker keeps a mood with probability
`mood_persistence`). Everything random comes from `seed`: the same seed gives byte-identical text files.

    python -m merc.tools.synth_corpus meld --out /tmp/meld --dialogues 8,2,2
    python -m merc.tools.synth_corpus iemocap --out /tmp/iemocap --dialogues 2
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import io
import multiprocessing
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr


@dataclass(frozen=True)
class Style:
    """How one emotion sounds and reads: espeak prosody, how often it occurs, its words."""

    pitch: int
    rate: int
    amplitude: int
    weight: float
    words: tuple[str, ...]


_NEUTRAL_WORDS = ("okay", "fine", "alright", "normal", "ordinary", "standard")
_JOY_WORDS = ("happy", "wonderful", "delighted", "thrilled", "fantastic", "lovely")
_SAD_WORDS = ("heartbroken", "miserable", "lonely", "depressing", "hopeless")
_ANGER_WORDS = ("furious", "outraged", "infuriating", "livid", "unacceptable")

MELD_STYLES: dict[str, Style] = {
    "neutral": Style(50, 170, 100, 0.28, _NEUTRAL_WORDS),
    "joy": Style(80, 190, 125, 0.14, _JOY_WORDS),
    "surprise": Style(
        92, 215, 135, 0.12, ("unbelievable", "shocking", "unexpected", "astonishing", "stunned")
    ),
    "anger": Style(55, 240, 170, 0.13, _ANGER_WORDS),
    "sadness": Style(15, 115, 55, 0.13, _SAD_WORDS),
    "disgust": Style(30, 145, 110, 0.10, ("disgusting", "gross", "revolting", "nasty", "sickening")),
    "fear": Style(72, 230, 75, 0.10, ("terrified", "scared", "frightening", "nervous", "afraid")),
}
MELD_SENTIMENT = {
    "neutral": "neutral",
    "joy": "positive",
    "surprise": "positive",
    "anger": "negative",
    "sadness": "negative",
    "disgust": "negative",
    "fear": "negative",
}
MELD_CAST = {
    "Joey": "en-us+m3",
    "Rachel": "en-us+f3",
    "Monica": "en-gb+f2",
    "Ross": "en-us+m1",
    "Chandler": "en-gb+m3",
    "Phoebe": "en-gb+f4",
}
MELD_COLUMNS = (
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
    "Season", "Episode", "StartTime", "EndTime",
)  # fmt: skip
# split -> clip folder (nested under <split>/, or directly under the root in the flat layout)
MELD_CLIP_FOLDERS = {
    "train": "train_splits",
    "dev": "dev_splits_complete",
    "test": "output_repeated_splits_test",
}

IEMOCAP_STYLES: dict[str, Style] = {
    "neu": Style(50, 170, 100, 0.20, _NEUTRAL_WORDS),
    "hap": Style(78, 185, 120, 0.12, _JOY_WORDS),
    "exc": Style(88, 225, 150, 0.14, ("excited", "incredible", "awesome", "ecstatic", "pumped")),
    "sad": Style(15, 115, 55, 0.16, _SAD_WORDS),
    "ang": Style(55, 240, 170, 0.16, _ANGER_WORDS),
    "fru": Style(35, 200, 140, 0.22, ("frustrating", "annoying", "ridiculous", "exhausting", "pointless")),
}
# mean (valence, activation, dominance) on the 1-5 scale of the IEMOCAP evaluators
IEMOCAP_VAD = {
    "neu": (3.0, 2.5, 2.5),
    "hap": (4.0, 3.0, 3.0),
    "exc": (4.0, 3.8, 3.3),
    "sad": (2.0, 2.0, 2.0),
    "ang": (1.8, 3.8, 3.8),
    "fru": (2.0, 3.2, 3.3),
}
_IEMOCAP_CATEGORY = {
    "neu": "Neutral state",
    "hap": "Happiness",
    "exc": "Excited",
    "sad": "Sadness",
    "ang": "Anger",
    "fru": "Frustration",
    "sur": "Surprise",
    "fea": "Fear",
    "dis": "Disgust",
    "oth": "Other",
}
# per session (index 0 = Session1): the female and the male actor's voice
_IEMOCAP_VOICES = {
    "F": ("en-us+f1", "en-gb+f2", "en-us+f3", "en-gb+f4", "en-us+f5"),
    "M": ("en-gb+m1", "en-us+m2", "en-gb+m3", "en-us+m4", "en-gb+m5"),
}
_IEMOCAP_KINDS = ("impro{:02d}", "script{:02d}_1", "impro{:02d}a", "script{:02d}_2")
_EMOEVAL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"

_EMOTION_TEMPLATES = (
    "I am so {w} right now.",
    "Honestly, this is {w}.",
    "Oh, that’s just {w}!",
    "You know what? I feel {w}.",
    "{W}. That’s the only word for it.",
    "It was {w}, really {w}.",
)
_FILLER_TEMPLATES = (
    "The {thing} is on the {place}.",
    "Did you move the {thing} to the {place}?",
    "I will bring the {thing} at {time}.",
    "We left the {thing} near the {place}.",
    "The {place} closes at {time}.",
)
_THINGS = ("coffee", "keys", "laptop", "umbrella", "sandwich", "newspaper", "guitar", "lamp")
_PLACES = ("kitchen", "table", "couch", "hallway", "office", "balcony")
_TIMES = ("noon", "six", "eight thirty", "midnight", "ten")

_JITTER = (6, 12, 12)  # +- pitch, rate, amplitude
_MELD_RATE = 48_000
_IEMOCAP_RATE = 16_000
_SURROUND_GAINS = np.array([0.3, 0.3, 1.0, 0.05, 0.1, 0.1], np.float32)  # FL FR FC LFE BL BR
_AAC_FRAME = 1024
_VIDEO_FPS = 5
_VIDEO_SIZE = 64


@dataclass(frozen=True)
class Turn:
    """One planned utterance: who says what, in which mood, with which espeak settings."""

    speaker: str
    voice: str
    emotion: str
    text: str
    pitch: int
    rate: int
    amplitude: int
    gap: float  # seconds of silence before the turn starts


@dataclass(frozen=True)
class _Clip:
    path: Path
    turn: Turn
    rgb: tuple[int, int, int] | None  # video frame colour; None: audio only


def speak(text: str, *, voice: str, pitch: int, rate: int, amplitude: int, sample_rate: int) -> np.ndarray:
    """Synthesize `text` with espeak-ng; float32 mono at `sample_rate`."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng is not on PATH; install it (apt-get install espeak-ng) to synthesize corpora"
        )
    cmd = [exe, "--stdout", "-v", voice, "-p", str(pitch), "-s", str(rate), "-a", str(amplitude)]
    proc = subprocess.run(cmd, input=text.encode(), capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(
            f"espeak-ng failed (voice {voice!r}, text {text!r}): {proc.stderr.decode().strip()}"
        )
    audio, rate_in = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if rate_in != sample_rate:
        audio = soxr.resample(audio, rate_in, sample_rate)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- planning (all randomness lives here)


def _sentence(rng: np.random.Generator, words: Sequence[str], emotional: bool) -> str:
    if emotional:
        word = str(rng.choice(words))
        return str(rng.choice(_EMOTION_TEMPLATES)).format(w=word, W=word.capitalize())
    template = str(rng.choice(_FILLER_TEMPLATES))
    return template.format(thing=rng.choice(_THINGS), place=rng.choice(_PLACES), time=rng.choice(_TIMES))


def _next_speaker(rng: np.random.Generator, names: Sequence[str], prev: str | None) -> str:
    """Mostly hand the floor to someone else; sometimes the same speaker goes on."""
    if prev is not None and rng.random() < 0.15:
        return prev
    others = [n for n in names if n != prev]
    return str(rng.choice(others))


def _next_emotion(
    rng: np.random.Generator, styles: Mapping[str, Style], prev: str | None, persistence: float
) -> str:
    """Keep the speaker's previous mood with probability `persistence`, else switch to another one."""
    if prev is not None and rng.random() < persistence:
        return prev
    choices = [e for e in styles if e != prev]
    weights = np.array([styles[e].weight for e in choices])
    return choices[rng.choice(len(choices), p=weights / weights.sum())]


def _jitter(rng: np.random.Generator, style: Style) -> tuple[int, int, int]:
    dp, dr, da = (int(rng.integers(-j, j + 1)) for j in _JITTER)
    return (
        int(np.clip(style.pitch + dp, 0, 99)),
        int(np.clip(style.rate + dr, 80, 450)),
        int(np.clip(style.amplitude + da, 0, 200)),
    )


def plan_dialogue(
    rng: np.random.Generator,
    cast: Mapping[str, str],
    n_turns: int,
    styles: Mapping[str, Style],
    *,
    text_signal: float,
    mood_persistence: float,
) -> list[Turn]:
    """Plan `n_turns` turns among `cast` (speaker -> espeak voice); each speaker carries a mood."""
    moods: dict[str, str] = {}
    turns: list[Turn] = []
    speaker: str | None = None
    for _ in range(n_turns):
        speaker = _next_speaker(rng, list(cast), speaker)
        emotion = _next_emotion(rng, styles, moods.get(speaker), mood_persistence)
        moods[speaker] = emotion
        style = styles[emotion]
        text = _sentence(rng, style.words, rng.random() < text_signal)
        pitch, rate, amplitude = _jitter(rng, style)
        gap = round(float(rng.uniform(0.2, 1.2)), 3)
        turns.append(Turn(speaker, cast[speaker], emotion, text, pitch, rate, amplitude, gap))
    return turns


def _emotion_rgb(rng: np.random.Generator, emotion: str, styles: Mapping[str, Style]) -> tuple[int, int, int]:
    """A frame colour whose hue leans weakly towards the emotion (wide jitter, overlapping classes)."""
    hue = (list(styles).index(emotion) / len(styles) + rng.uniform(-0.3, 0.3)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.6, 0.8)
    return round(r * 255), round(g * 255), round(b * 255)


def _check_args(utterances: tuple[int, int], text_signal: float, mood_persistence: float) -> None:
    lo, hi = utterances
    if not 1 <= lo <= hi:
        raise ValueError(f"utterances must be (min, max) with 1 <= min <= max, got {utterances}")
    for name, value in (("text_signal", text_signal), ("mood_persistence", mood_persistence)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")


# ---------------------------------------------------------------- rendering (top-level: spawn-safe)


def _speak_turn(turn: Turn, sample_rate: int) -> np.ndarray:
    return speak(
        turn.text,
        voice=turn.voice,
        pitch=turn.pitch,
        rate=turn.rate,
        amplitude=turn.amplitude,
        sample_rate=sample_rate,
    )


def _audio_frames(speech: np.ndarray) -> Iterator[av.AudioFrame]:
    n = -(-len(speech) // _AAC_FRAME) * _AAC_FRAME
    pcm = np.zeros((len(_SURROUND_GAINS), n), np.float32)
    pcm[:, : len(speech)] = _SURROUND_GAINS[:, None] * speech[None, :]
    for start in range(0, n, _AAC_FRAME):
        frame = av.AudioFrame.from_ndarray(pcm[:, start : start + _AAC_FRAME], format="fltp", layout="5.1")
        frame.sample_rate = _MELD_RATE
        frame.pts = start
        yield frame


def _video_frames(rgb: tuple[int, int, int], seconds: float) -> Iterator[av.VideoFrame]:
    image = np.empty((_VIDEO_SIZE, _VIDEO_SIZE, 3), np.uint8)
    image[...] = rgb
    for index in range(max(1, int(np.ceil(seconds * _VIDEO_FPS)))):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        yield frame


def write_mp4(path: Path, speech: np.ndarray, rgb: tuple[int, int, int] | None) -> None:
    """A MELD-like clip: 5.1 AAC at 48 kHz (speech in the center channel), plus solid-colour video."""
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=_MELD_RATE, layout="5.1", options={"aac_coder": "fast"})
        streams = [(audio, _audio_frames(speech))]
        if rgb is not None:
            video = container.add_stream("libx264", rate=_VIDEO_FPS, options={"preset": "ultrafast"})
            video.width = video.height = _VIDEO_SIZE
            video.pix_fmt = "yuv420p"
            streams.append((video, _video_frames(rgb, len(speech) / _MELD_RATE)))
        for stream, frames in streams:  # all streams exist before the first packet is muxed
            for frame in frames:
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))


def _render_meld_clip(clip: _Clip) -> float:
    speech = _speak_turn(clip.turn, _MELD_RATE)
    write_mp4(clip.path, speech, clip.rgb)
    return len(speech) / _MELD_RATE


def _render_iemocap_wav(clip: _Clip) -> float:
    speech = _speak_turn(clip.turn, _IEMOCAP_RATE)
    sf.write(clip.path, speech, _IEMOCAP_RATE, subtype="PCM_16")
    return len(speech) / _IEMOCAP_RATE


def _render_all(render: Callable[[_Clip], float], clips: Sequence[_Clip], workers: int) -> list[float]:
    """Render every clip (in a spawn process pool when workers > 1); returns durations in seconds."""
    for clip in clips:
        clip.path.parent.mkdir(parents=True, exist_ok=True)
    if workers <= 1:
        return [render(clip) for clip in clips]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(render, clips, chunksize=max(1, len(clips) // (4 * workers))))


def _starts(turns: Sequence[Turn], durations: Sequence[float], origin: float) -> list[float]:
    """Start time of each turn on the dialogue's clock: previous end + the turn's gap."""
    starts, clock = [], origin
    for turn, duration in zip(turns, durations, strict=True):
        starts.append(clock + turn.gap)
        clock = starts[-1] + duration
    return starts


# ---------------------------------------------------------------- MELD


@dataclass(frozen=True)
class _MeldDialogue:
    split: str
    dialogue_id: int
    season: int
    episode: int
    origin: float
    turns: list[Turn]
    colours: list[tuple[int, int, int]]


def _srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _meld_clip_dir(out: Path, split: str, layout: str) -> Path:
    folder = MELD_CLIP_FOLDERS[split]
    return out / folder if layout == "flat" else out / split / folder


def _plan_meld(
    rng: np.random.Generator,
    dialogues: tuple[int, int, int],
    utterances: tuple[int, int],
    text_signal: float,
    mood_persistence: float,
) -> list[_MeldDialogue]:
    plans = []
    for split, count in zip(MELD_CLIP_FOLDERS, dialogues, strict=True):
        for dialogue_id in range(count):
            names = rng.choice(list(MELD_CAST), size=int(rng.integers(2, 4)), replace=False)
            cast = {str(name): MELD_CAST[str(name)] for name in names}
            n_turns = int(rng.integers(utterances[0], utterances[1] + 1))
            turns = plan_dialogue(
                rng, cast, n_turns, MELD_STYLES, text_signal=text_signal, mood_persistence=mood_persistence
            )
            colours = [_emotion_rgb(rng, turn.emotion, MELD_STYLES) for turn in turns]
            season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
            origin = round(float(rng.uniform(30.0, 1200.0)), 3)
            plans.append(_MeldDialogue(split, dialogue_id, season, episode, origin, turns, colours))
    return plans


def _meld_rows(plan: _MeldDialogue, durations: Sequence[float]) -> list[list[str | int]]:
    rows: list[list[str | int]] = []
    starts = _starts(plan.turns, durations, plan.origin)
    for index, (turn, start, duration) in enumerate(zip(plan.turns, starts, durations, strict=True)):
        rows.append([
            turn.text, turn.speaker, turn.emotion, MELD_SENTIMENT[turn.emotion], plan.dialogue_id, index,
            plan.season, plan.episode, _srt_time(start), _srt_time(start + duration),
        ])  # fmt: skip
    return rows


def _write_meld_csv(path: Path, rows: Sequence[Sequence[str | int]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(MELD_COLUMNS)
        writer.writerows([sr_no, *row] for sr_no, row in enumerate(rows, start=1))


def make_meld(
    out: Path,
    *,
    dialogues: tuple[int, int, int] = (8, 2, 2),
    utterances: tuple[int, int] = (4, 8),
    seed: int = 0,
    text_signal: float = 0.5,
    mood_persistence: float = 0.8,
    layout: str = "nested",
    video: bool = True,
    workers: int = 1,
) -> Path:
    """Write a MELD-raw-like corpus under `out` (CSVs at the top, clips per split); returns `out`."""
    _check_args(utterances, text_signal, mood_persistence)
    if layout not in ("nested", "flat"):
        raise ValueError(f"layout must be 'nested' or 'flat', got {layout!r}")
    out = Path(out)
    plans = _plan_meld(np.random.default_rng(seed), dialogues, utterances, text_signal, mood_persistence)
    clips = [
        _Clip(
            _meld_clip_dir(out, plan.split, layout) / f"dia{plan.dialogue_id}_utt{index}.mp4",
            turn,
            colour if video else None,
        )
        for plan in plans
        for index, (turn, colour) in enumerate(zip(plan.turns, plan.colours, strict=True))
    ]
    durations = iter(_render_all(_render_meld_clip, clips, workers))
    rows: dict[str, list[list[str | int]]] = {split: [] for split in MELD_CLIP_FOLDERS}
    for plan in plans:
        rows[plan.split] += _meld_rows(plan, [next(durations) for _ in plan.turns])
    for split, split_rows in rows.items():
        _write_meld_csv(out / f"{split}_sent_emo.csv", split_rows)
    return out


# ---------------------------------------------------------------- IEMOCAP


@dataclass(frozen=True)
class _Rating:
    """What the evaluators said about one turn."""

    label: str  # consensus code; "xxx" / "oth" hide the turn's emotion
    votes: list[str]  # categorical evaluators
    scores: np.ndarray  # [evaluator, (val, act, dom)] integers 1..5


@dataclass(frozen=True)
class _IemocapDialog:
    session: int
    name: str
    turns: list[Turn]
    utt_ids: list[str]
    ratings: list[_Rating]


def _iemocap_dialog_name(session: int, index: int) -> str:
    kind = _IEMOCAP_KINDS[(index + session) % len(_IEMOCAP_KINDS)].format(index // len(_IEMOCAP_KINDS) + 1)
    return f"Ses{session:02d}{'FM'[(index + session) % 2]}_{kind}"


def _utt_ids(name: str, turns: Sequence[Turn]) -> list[str]:
    counts = {"F": 0, "M": 0}
    ids = []
    for turn in turns:
        ids.append(f"{name}_{turn.speaker}{counts[turn.speaker]:03d}")
        counts[turn.speaker] += 1
    return ids


def _rate(rng: np.random.Generator, emotion: str, other_fraction: float) -> _Rating:
    """Evaluators: a majority for the label (none for xxx), dimensional scores around the emotion."""
    names = list(_IEMOCAP_CATEGORY.values())
    label = emotion
    if rng.random() < other_fraction:
        label = "xxx" if rng.random() < 0.75 else "oth"
    if label == "xxx":
        votes = [str(v) for v in rng.choice(names, size=3, replace=False)]
    else:
        votes = [_IEMOCAP_CATEGORY[label]] * 2 + [str(rng.choice(names))]
    scores = np.clip(np.rint(np.array(IEMOCAP_VAD[emotion]) + rng.normal(0.0, 0.5, (2, 3))), 1, 5).astype(int)
    return _Rating(label, votes, scores)


def _plan_iemocap(
    rng: np.random.Generator,
    dialogues_per_session: int,
    utterances: tuple[int, int],
    text_signal: float,
    mood_persistence: float,
    other_fraction: float,
) -> list[_IemocapDialog]:
    plans = []
    for session in range(1, 6):
        cast = {sex: voices[session - 1] for sex, voices in _IEMOCAP_VOICES.items()}
        for index in range(dialogues_per_session):
            name = _iemocap_dialog_name(session, index)
            n_turns = int(rng.integers(utterances[0], utterances[1] + 1))
            turns = plan_dialogue(
                rng, cast, n_turns, IEMOCAP_STYLES, text_signal=text_signal, mood_persistence=mood_persistence
            )
            ratings = [_rate(rng, turn.emotion, other_fraction) for turn in turns]
            plans.append(_IemocapDialog(session, name, turns, _utt_ids(name, turns), ratings))
    return plans


def _emo_block(utt: str, start: float, end: float, rating: _Rating) -> list[str]:
    v, a, d = rating.scores.mean(axis=0)
    lines = [f"[{start:.4f} - {end:.4f}]\t{utt}\t{rating.label}\t[{v:.4f}, {a:.4f}, {d:.4f}]"]
    lines += [f"C-E{k}:\t{vote};\t()" for k, vote in enumerate(rating.votes, start=1)]
    lines += [
        f"A-E{k}:\tval {v}; act {a}; dom  {d};\t()" for k, (v, a, d) in enumerate(rating.scores, start=1)
    ]
    return [*lines, ""]


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _write_iemocap_dialog(out: Path, plan: _IemocapDialog, durations: Sequence[float]) -> None:
    """EmoEvaluation (plus a Categorical/ subfolder file readers must skip) and transcriptions."""
    dialog_dir = out / f"Session{plan.session}" / "dialog"
    starts = _starts(plan.turns, durations, 0.0)
    emo, transcript, categorical = [_EMOEVAL_HEADER, ""], [], []
    for turn, utt, rating, start, duration in zip(
        plan.turns, plan.utt_ids, plan.ratings, starts, durations, strict=True
    ):
        emo += _emo_block(utt, start, start + duration, rating)
        transcript.append(f"{utt} [{start:08.4f}-{start + duration:08.4f}]: {turn.text}")
        categorical.append(f"{utt} :{rating.votes[0]}; ()")
    _write_lines(dialog_dir / "EmoEvaluation" / f"{plan.name}.txt", emo)
    _write_lines(dialog_dir / "EmoEvaluation" / "Categorical" / f"{plan.name}_e1_cat.txt", categorical)
    _write_lines(dialog_dir / "transcriptions" / f"{plan.name}.txt", transcript)


def make_iemocap(
    out: Path,
    *,
    dialogues_per_session: int = 2,
    utterances: tuple[int, int] = (6, 10),
    seed: int = 0,
    text_signal: float = 0.5,
    mood_persistence: float = 0.8,
    other_fraction: float = 0.05,
    workers: int = 1,
) -> Path:
    """Write an IEMOCAP_full_release-like tree (Session1..Session5) under `out`; returns `out`."""
    _check_args(utterances, text_signal, mood_persistence)
    if not 0.0 <= other_fraction <= 1.0:
        raise ValueError(f"other_fraction must be in [0, 1], got {other_fraction}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    plans = _plan_iemocap(
        rng, dialogues_per_session, utterances, text_signal, mood_persistence, other_fraction
    )
    clips = [
        _Clip(out / f"Session{plan.session}" / "sentences" / "wav" / plan.name / f"{utt}.wav", turn, None)
        for plan in plans
        for turn, utt in zip(plan.turns, plan.utt_ids, strict=True)
    ]
    durations = iter(_render_all(_render_iemocap_wav, clips, workers))
    for plan in plans:
        _write_iemocap_dialog(out, plan, [next(durations) for _ in plan.turns])
    return out


# ---------------------------------------------------------------- CLI


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m merc.tools.synth_corpus", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="corpus", required=True)
    meld = sub.add_parser("meld", help="MELD raw release layout")
    meld.add_argument(
        "--dialogues", type=_int_tuple, default=(8, 2, 2), help="train,dev,test dialogue counts"
    )
    meld.add_argument("--utterances", type=_int_tuple, default=(4, 8), help="min,max utterances per dialogue")
    meld.add_argument("--layout", choices=("nested", "flat"), default="nested")
    meld.add_argument("--no-video", dest="video", action="store_false")
    iemocap = sub.add_parser("iemocap", help="IEMOCAP_full_release layout")
    iemocap.add_argument("--dialogues", type=int, default=2, help="dialogues per session")
    iemocap.add_argument(
        "--utterances", type=_int_tuple, default=(6, 10), help="min,max utterances per dialogue"
    )
    iemocap.add_argument(
        "--other-fraction", type=float, default=0.05, help="share of xxx/oth consensus labels"
    )
    for command in (meld, iemocap):
        command.add_argument("--out", type=Path, required=True)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--text-signal", type=float, default=0.5)
        command.add_argument("--mood-persistence", type=float, default=0.8)
        command.add_argument("--workers", type=int, default=1)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    common = {
        "utterances": args.utterances,
        "seed": args.seed,
        "text_signal": args.text_signal,
        "mood_persistence": args.mood_persistence,
        "workers": args.workers,
    }
    began = time.perf_counter()
    if args.corpus == "meld":
        out = make_meld(args.out, dialogues=args.dialogues, layout=args.layout, video=args.video, **common)
        clips = sum(1 for _ in out.rglob("dia*_utt*.mp4"))
    else:
        out = make_iemocap(
            args.out, dialogues_per_session=args.dialogues, other_fraction=args.other_fraction, **common
        )
        clips = sum(1 for _ in out.glob("Session*/sentences/wav/*/*.wav"))
    print(f"{args.corpus}: {clips} utterances written to {out} in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
