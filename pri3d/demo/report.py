"""The demo's table and report.md: mean ± std over seeds, every run's number, and verdicts.

An arm *beats* another by more than the spread when the difference of their means exceeds the sum
of their standard deviations (their mean ± std intervals do not overlap); it is *below* when the
difference is more than that the other way, and *within* the spread otherwise. Standard deviations
are sample deviations (n − 1) over every run of a row: for a pre-trained arm, its pre-training seeds
× fine-tuning seeds (the spread covers both), for scratch as many fine-tuning seeds.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from pri3d.demo.study import ARMS, MOCO, MOCO_QUEUE, pretrain_lr

__all__ = ["READOUTS", "compare", "describe", "findings", "markdown", "summarise"]

#: The two read-outs: key in a row -> how the report names it.
READOUTS = {"finetune": "fine-tuned", "probe": "linear probe"}
#: What each arm is compared with.
REFERENCES = ("scratch", MOCO.name)


def describe(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for a single value) and count."""
    if not values:
        raise ValueError("no values to describe")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": std, "n": len(values)}


def compare(arm: dict, reference: dict) -> dict:
    """``arm`` against ``reference`` (both from :func:`describe`): delta of means, the spread (sum of
    the standard deviations) and the verdict: ``beats``, ``within`` or ``below``."""
    delta = arm["mean"] - reference["mean"]
    spread = arm["std"] + reference["std"]
    verdict = "beats" if delta > spread else "below" if delta < -spread else "within"
    return {"delta": delta, "spread": spread, "verdict": verdict}


def summarise(finetuned: dict[str, list[dict]], probed: dict[str, list[dict]]) -> list[dict]:
    """One row per initialisation, scratch first, then the arms in `ARMS` order.

    ``finetuned``: init -> runs ``{"pretrain_seed", "seed", "miou", ...}``; ``probed``: init -> probes
    ``{"pretrain_seed", "miou", ...}``. A row holds, per read-out, the :func:`describe` numbers and
    its ``runs``, and ``versus``: reference -> read-out -> :func:`compare` against scratch and MoCo.
    """
    order = ["scratch", *(arm.name for arm in ARMS)]
    inits = [init for init in order if init in finetuned] + [i for i in finetuned if i not in order]
    rows = []
    for init in inits:
        row = {"init": init}
        for readout, runs in (("finetune", finetuned[init]), ("probe", probed.get(init, []))):
            row[readout] = {**describe([r["miou"] for r in runs]), "runs": runs} if runs else None
        rows.append(row)
    by_init = {row["init"]: row for row in rows}
    for row in rows:
        row["versus"] = {
            reference: {
                readout: compare(row[readout], by_init[reference][readout])
                for readout in READOUTS
                if row[readout] and by_init[reference][readout]
            }
            for reference in REFERENCES
            if reference in by_init and reference != row["init"]
        }
    return rows


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _per_run(row: dict, readout: str) -> str:
    """Every run's number: scratch's by seed, an arm's grouped by pre-training seed."""
    runs = row[readout]["runs"]
    if row["init"] == "scratch" and readout == "finetune":
        return (
            ", ".join(_pct(r["miou"]) for r in runs) + f" (seeds {', '.join(str(r['seed']) for r in runs)})"
        )
    groups: dict[int, list[str]] = {}
    for r in runs:
        groups.setdefault(r["pretrain_seed"], []).append(_pct(r["miou"]))
    return "; ".join(f"{seed}: {', '.join(values)}" for seed, values in groups.items())


def _versus(row: dict, reference: str, readout: str) -> str:
    result = row["versus"].get(reference, {}).get(readout)
    if result is None:
        return "–"
    words = {"beats": "**beats**", "within": "within", "below": "below"}[result["verdict"]]
    return f"{100 * result['delta']:+.1f} (spread {_pct(result['spread'])}): {words}"


def table(rows: list[dict], readout: str) -> list[str]:
    """Markdown lines of one read-out's table."""
    per_run = (
        "per run (pre-training seed: fine-tuning seeds)" if readout == "finetune" else "per pre-training seed"
    )
    lines = [
        f"| init | {READOUTS[readout]} val mIoU (mean ± std, runs) | {per_run} | vs scratch | vs MoCo |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        stats = row[readout]
        if stats is None:
            continue
        lines.append(
            f"| {row['init']} | {_pct(stats['mean'])} ± {_pct(stats['std'])} ({stats['n']}) | "
            f"{_per_run(row, readout)} | {_versus(row, 'scratch', readout)} | {_versus(row, MOCO.name, readout)} |"
        )
    return lines


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def findings(rows: list[dict]) -> list[str]:
    """Plain sentences: for each read-out and reference, which arms beat it, stay within the spread
    or fall below; and which arms beat both scratch and MoCo."""
    lines = []
    for readout, label in READOUTS.items():
        for reference in REFERENCES:
            groups: dict[str, list[str]] = {"beats": [], "within": [], "below": []}
            for row in rows:
                result = row["versus"].get(reference, {}).get(readout)
                if result is not None:
                    groups[result["verdict"]].append(
                        f"{row['init']} ({100 * result['delta']:+.1f} against a spread of {_pct(result['spread'])})"
                    )
            if not any(groups.values()):
                continue
            parts = []
            if groups["beats"]:
                parts.append(
                    f"{_names(groups['beats'])} beat{'s' if len(groups['beats']) == 1 else ''} {reference}"
                )
            else:
                parts.append(f"no arm beats {reference} by more than the spread")
            if groups["within"]:
                parts.append(f"within the spread: {_names(groups['within'])}")
            if groups["below"]:
                parts.append(f"below {reference} by more than the spread: {_names(groups['below'])}")
            lines.append(f"{label.capitalize()}, against {reference}: " + "; ".join(parts) + ".")
        both = [
            row["init"]
            for row in rows
            if all(
                row["versus"].get(ref, {}).get(readout, {}).get("verdict") == "beats" for ref in REFERENCES
            )
        ]
        lines.append(
            f"{label.capitalize()}: "
            + (
                f"{_names(both)} beat{'s' if len(both) == 1 else ''} both scratch and MoCo by more than the spread."
                if both
                else "no Pri3D arm beats both scratch and MoCo by more than the spread."
            )
        )
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def markdown(report: dict) -> str:
    """report.md from the demo's report.json content."""
    gen, pre, geo = report["generate scans"], report["preprocess"], report["check geometry"]
    study = report["pre-train, fine-tune, probe"]
    config = report["config"]["study"]
    h, w = config["size"]
    steps, batch = config["pretrain_steps"], config["pretrain_batch"]
    seeds = ", ".join(str(s) for s in config["pretrain_seeds"])
    lines = [
        "# pri3d demo: do 3D priors beat 2D-only contrastive pre-training?",
        "",
        f"- data: {len(gen['train'])} train + {len(gen['val'])} held-out val scenes "
        f"({report['config']['synth']['frames']} frames each, {h}×{w}) in `{gen['root']}`",
        f"- pre-training data (train scenes only): {pre['frames']} frames, {pre['pairs']} overlapping pairs",
        f"- frames {geo['frame_gap']} apart: median {geo['matched_share_median']} of valid pixels match "
        f"within {geo['threshold_m']} m ({geo['pairs']} pairs)",
        f"- every arm: {_count(steps, 'step')} of batch {batch}, {2 * batch} images a step ({batch} pairs of "
        f"frames for Pri3D, {batch} frames × 2 crops for MoCo), SGD lr {pretrain_lr(batch)}, pre-training "
        f"seeds {seeds}, each from its seed's random initialisation",
        f"- Pri3D (View, Geo, View+Geo): Res18UNet, {config['sample_points']} matches per pair, "
        f"{config['voxel_size']} m voxels "
        + (
            "of each view's frustum (`--voxel-crop frustum`)"
            if config.get("voxel_crop") == "frustum"
            else "of each view's chunk box (the original's)"
        )
        + ", poly schedule; "
        + ("depth loss in every arm" if config.get("depth") else "no depth loss (`--depth-loss` adds it)"),
        f"- MoCo v2: the first frame of each pair, two aug-plus crops of {min(h, w)}×{min(h, w)} from the frame at "
        f"{h}×{w}, ResNet-18 (Res18UNet's encoder), queue {MOCO_QUEUE}, cosine schedule. It trains the encoder "
        "only: its fine-tuning and its probe start from scratch's random decoder under the same seed, so they "
        "differ from scratch's by the encoder alone",
        f"- fine-tuning: {config['labelled_share']:.0%} of each train scene's labelled frames, "
        f"{_count(config['finetune_epochs'], 'epoch')} of batch {config['finetune_batch']}, the same recipe for "
        f"every init; each pre-trained model with fine-tuning seeds {', '.join(str(s) for s in config['seeds'])}",
        f"- linear probe: a 1×1-conv classifier ({config['probe_steps']} Adam steps) on the frozen decoder's "
        "features (BatchNorm statistics from the labelled frames), the same read-out for every init: the "
        "features fine-tuning's classifier reads; for MoCo, whose decoder is scratch's, it differs from "
        f"scratch's by the encoder alone (a probe on the encoder's last stage, {-(-h // 32)}×{-(-w // 32)} cells "
        "here, would measure the upsampling more than the features); scratch's with each pre-training seed's "
        "random initialisation",
        "- both read-outs: standard mIoU × 100 on the val scenes, the model after the last step",
        "",
        "## Fine-tuned",
        "",
        *table(study["table"], "finetune"),
        "",
        "## Linear probe on the frozen decoder's features",
        "",
        *table(study["table"], "probe"),
        "",
        "## What the table shows",
        "",
        *(f"- {line}" for line in findings(study["table"])),
        "- Spread: the sample standard deviation over every run of a row; an arm beats another by more "
        "than the spread when their means differ by more than the sum of the two deviations.",
        "",
        f"Figures in `{Path(report['figures']['miou_bars']).parent}`: "
        + ", ".join(f"`{Path(p).name}`" for k, p in report["figures"].items() if k != "seconds")
        + f", `{Path(geo['correspondence_figure']).name}`, `{Path(geo['preview']).name}`.",
        "",
        f"Total time {report['seconds']:.0f} s on {report['config']['device']}.",
        "",
    ]
    return "\n".join(lines)
