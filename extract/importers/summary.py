"""What `merc-extract import` and `merc-extract status` say about an import, in words.

One place for the wording, so that the import's own report and the store's status describe the same
provenance the same way: family, source file and SHA-256, how the dev split was made, the label map.
"""

from __future__ import annotations

from typing import Any

from .base import ImportedCorpus


def detected_lines(family: str, corpus: ImportedCorpus) -> list[str]:
    """The import command's report of what it found, before anything is written."""
    prov, m = corpus.provenance, corpus.manifest
    splits = ", ".join(f"{s} {len(m.split(s))}" for s in ("train", "dev", "test") if m.split(s))
    lines = [f"detected: {family} importer, family {prov.get('family')}"
             + (f" ({prov['layout']})" if prov.get("layout") else ""),
             f"  {prov.get('description', '')}".rstrip(),
             f"  {len(m.dialogues)} dialogues, {m.n_utterances} utterances ({splits}); "
             f"label spaces: {', '.join(f'{n} ({len(s.classes)} classes)' if s.classes else n for n, s in m.label_spaces.items())}",
             f"  dev split: {prov.get('dev_split', 'as the file defines it')}"]
    if corpus.features:
        lines += [f"  feature set {fs.name}: {fs.modality}, dim {_dim(fs)}"
                  + (", with frames" if fs.frames is not None else "") for fs in corpus.features]
    else:
        lines.append("  no features: the import is a manifest (text and labels)")
    for key in ("dialogue_ids", "utterance_ids", "speakers"):
        if prov.get(key):
            lines.append(f"  {key.replace('_', ' ')}: {prov[key]}")
    lines += [f"  note: {n}" for n in prov.get("notes", [])]
    return [line for line in lines if line.strip()]


def _dim(fs) -> int | str:
    first = next(iter(fs.pooled.values()), None)
    return int(first.shape[1]) if first is not None and getattr(first, "ndim", 0) == 2 else "?"


def provenance_line(where: str, prov: dict[str, Any], *, full: bool) -> str:
    """One line of `status`: `where` was imported from <files> (sha256 ...), family ...; dev split ...."""
    files = ", ".join(f"{s.get('file')} (sha256 {str(s.get('sha256'))[:12]}…)" for s in prov.get("sources", []))
    text = f"{where}: imported from {files}, family {prov.get('family')}"
    if full:
        if prov.get("dev_split"):
            text += f"; dev split: {prov['dev_split']}"
        for space, mapping in (prov.get("label_map") or {}).items():
            text += f"; {space} labels: " + " ".join(f"{i}={c}" for i, c in mapping.items())
        policies = {k: v for k, v in prov.items() if k.endswith("policy") or k == "policies"}
        for k, v in policies.items():
            text += f"; {k}: {v}"
    elif prov.get("feature_policies"):
        text += f"; values: {prov['feature_policies']}"
    return text
