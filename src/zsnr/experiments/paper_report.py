"""`make paper`'s claims table and report.md: each claim of the paper (arXiv 2305.08891) against what the
miniature measured (zsnr.experiments.paper collects the results; paper_measures measures)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from zsnr.diffusion import alphas_cumprod, make_betas, rescale_zero_terminal_snr, select_timesteps
from zsnr.experiments.demo_metrics import w1_flawed_over_fixed
from zsnr.experiments.demo_report import summary_table
from zsnr.experiments.paper_measures import Claim, claims_table

# The paper's Table 2 (T = 1000, S = 10, 1-based, ascending) and Table 1's sqrt(abar_T) of SD's schedule.
TABLE2 = {
    "leading": [1, 101, 201, 301, 401, 501, 601, 701, 801, 901],
    "linspace": [1, 112, 223, 334, 445, 556, 667, 778, 889, 1000],
    "trailing": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
}
SD_SQRT_ABAR_T = 0.068265
NOT_REFUSED = "the sampler did not refuse t = T"
EXTREMES = ("dark", "bright")


def _w1(stats: Mapping[str, Any], sets: Sequence[str] = EXTREMES) -> float:
    return sum(stats[s]["wasserstein_to_reference"] for s in sets) / len(sets)


def _means(stats: Mapping[str, Any]) -> str:
    return ", ".join(f"{s} mean {stats[s]['mean']:+.2f}" for s in EXTREMES)


def schedule_claims() -> list[Claim]:
    sd = make_betas("scaled_linear", 1000)
    abar, fixed = alphas_cumprod(sd), alphas_cumprod(rescale_zero_terminal_snr(sd))
    sqrt_t = abar[-1].sqrt().item()
    table2 = {s: sorted((select_timesteps(1000, 10, s) + 1).tolist()) for s in TABLE2}
    return [
        Claim("Table 1", f"SD's schedule stops at sqrt(abar_T) = {SD_SQRT_ABAR_T} (SNR(T) > 0: x_T keeps some signal)",
              f"sqrt(abar_T) = {sqrt_t:.6f}, SNR(T) = {sqrt_t**2 / (1 - sqrt_t**2):.4e} (the table's SNR column prints "
              "4.928220e-03, which its own sqrt(abar_T) does not give)", abs(sqrt_t - SD_SQRT_ABAR_T) < 1e-6),
        Claim("Algorithm 1", "the rescaled schedule reaches SNR(T) = 0 and keeps sqrt(abar_1)",
              f"abar_T = {fixed[-1].item():.1e}, sqrt(abar_1) changed by {abs(fixed[0] - abar[0]).sqrt().item():.1e}",
              fixed[-1].item() == 0.0 and torch.allclose(fixed[0], abar[0])),
        Claim("Table 2", "leading / linspace / trailing timesteps for T = 1000, S = 10; only trailing and linspace "
              "start at T", "; ".join(f"{s} {v[0]}..{v[-1]}" for s, v in table2.items()), table2 == TABLE2),
    ]  # fmt: skip


def demo_claims(metrics: Mapping[str, Any], seed: str) -> list[Claim]:
    fixed, flawed, data = metrics["fixed"]["seeds"][seed], metrics["flawed"]["seeds"][seed], metrics["data"]
    reach = all(abs(fixed[s]["mean"] - data[s]["mean"]) <= 0.1 for s in EXTREMES)
    ratio = min(w1_flawed_over_fixed(flawed[s], fixed[s]) for s in EXTREMES)
    colours = [k for k in ("red", "blue", "green") if k in fixed]
    cos = {
        m: min(sets[k]["colour_agreement"] for k in colours)
        for m, sets in (("flawed", flawed), ("fixed", fixed))
    }
    return [
        Claim("Figure 3, section 5", "with all four fixes the model makes truly black and truly white images",
              f"fixed: {_means(fixed)} (data {data['dark']['mean']:+.2f} / {data['bright']['mean']:+.2f})", reach),
        Claim("Figure 3", "the model without the fixes cannot: its black / white prompts come out medium",
              f"flawed: {_means(flawed)}; its W1 to the data "
              + (f">= {ratio:.0f}x the fixed one's" if math.isfinite(ratio) else "> 0 where the fixed one's is 0"),
              ratio >= 3),
        Claim("Figure 3", "both follow the prompt otherwise (only the extremes fail for the flawed model)",
              f"colour cosine to the data (worst of red / blue / green): flawed {cos['flawed']:.2f}, fixed "
              f"{cos['fixed']:.2f} (>= 0.8 asked)", min(cos.values()) >= 0.8),
    ]  # fmt: skip


def ablation_claims(results: Mapping[str, Any], fixed: Mapping[str, Any]) -> list[Claim]:
    r = results["ablations"]
    m = r["metrics"]
    names = {
        key: next(n for n in m if n.startswith(key))
        for key in ("no v", "no trailing", "no CFG", "no zero", "offset")
    }
    base_w1 = max(_w1(fixed), 0.01)
    out = []
    eps = m[names["no v"]]
    refused = r["refusal"] != NOT_REFUSED
    noise = max(s["noise_median"] for s in eps.values())
    worse = _w1(eps) >= 3 * base_w1 or noise > 0.03
    out.append(Claim("Section 3.2", "zero terminal SNR needs v-prediction: epsilon at SNR 0 reveals nothing of x0",
                     (f"the sampler refuses t = T ('{r['refusal'].split(':')[0]}')" if refused else NOT_REFUSED)
                     + f"; started one step lower: {_means(eps)}, noise {noise:.3f}, extremes' W1 {_w1(eps):.2f} vs "
                     f"fixed {_w1(fixed):.2f}", refused and worse))  # fmt: skip
    lead = m[names["no trailing"]]
    s = {k: sampler_score(v) for k, v in results["samplers"]["metrics"].items()}
    lo = min(int(k.split("S = ")[1]) for k in s)
    first = {n: int(select_timesteps(1000, n, "leading")[0]) + 1 for n in (lo, r["num_steps"])}
    ratio = s[f"leading, S = {lo}"] / max(s[f"trailing, S = {lo}"], 1e-9)
    out.append(Claim("Section 3.3", "samplers must start at t = T: steps that never reach it (leading) are flawed",
                     f"S = {r['num_steps']} (leading starts at t = {first[r['num_steps']]}): {_means(lead)}, extremes' W1 "
                     f"{_w1(lead):.2f} vs trailing {_w1(fixed):.2f}; S = {lo} (t = {first[lo]}): mean W1 (Figure 4) "
                     f"{ratio:.1f}x trailing's", ratio >= 1.5))  # fmt: skip
    sd = m[names["no zero"]]
    out.append(Claim("Section 3.1", "without the zero-SNR schedule (v-prediction alone) the extremes stay out of reach",
                     f"{_means(sd)}; extremes' W1 {_w1(sd):.2f} vs fixed {_w1(fixed):.2f}",
                     _w1(sd) >= 3 * base_w1))  # fmt: skip
    return out


def offset_claims(m: Mapping[str, Any], flawed: Mapping[str, Any], fixed: Mapping[str, Any],
                  data: Mapping[str, Any]) -> list[Claim]:  # fmt: skip
    """Section 5.4: offset noise moves brightness (closer to the data's extremes than the flawed model), but
    its brightness distribution is not the data's: it overshoots (more images in the tails than the data)."""
    o = m[next(n for n in m if n.startswith("offset"))]
    u, du, fu = o["unconditional"], data["unconditional"], fixed["unconditional"]
    tails = lambda x: x["frac_dark"] + x["frac_bright"]  # noqa: E731
    return [
        Claim("Section 5.4", "offset noise lets the model reach darker and brighter images",
              f"{_means(o)}; extremes' W1 {_w1(o):.2f} (flawed {_w1(flawed):.2f}, fixed {_w1(fixed):.2f})",
              _w1(o) < _w1(flawed)),
        Claim("Section 5.4", "but it is not faithful to the data's brightness distribution: it overshoots",
              f"unconditional W1 {u['wasserstein_to_reference']:.2f} (fixed {fu['wasserstein_to_reference']:.2f}); "
              f"images < -0.7 / > +0.7: {100 * u['frac_dark']:.0f}% / {100 * u['frac_bright']:.0f}% (data "
              f"{100 * du['frac_dark']:.0f}% / {100 * du['frac_bright']:.0f}%, fixed {100 * fu['frac_dark']:.0f}% / "
              f"{100 * fu['frac_bright']:.0f}%)",
              u["wasserstein_to_reference"] > fu["wasserstein_to_reference"] and tails(u) > tails(du)),
    ]  # fmt: skip


def w1_mean(phi_row: Mapping[str, Any]) -> float:
    """Figure 6: one phi's W1 to the data, averaged over the prompt sets."""
    return sum(phi_row["w1"].values()) / len(phi_row["w1"])


def sampler_score(stats: Mapping[str, Any]) -> float:
    """Figure 4's comparison: mean W1 to the data over the unconditional, dark and bright sets."""
    return _w1(stats, ("unconditional", *EXTREMES))


def phi_factors(phi: Mapping[str, Any]) -> dict[str, Any]:
    """Figure 6's rows, one per phi, without the sweep's "data" and "grid" entries."""
    return {k: v for k, v in phi.items() if k not in ("data", "grid")}


def figure_claims(results: Mapping[str, Any]) -> list[Claim]:
    s = {k: sampler_score(v) for k, v in results["samplers"]["metrics"].items()}
    steps = sorted({int(k.split("S = ")[1]) for k in s})
    gap = {n: s[f"linspace, S = {n}"] - s[f"trailing, S = {n}"] for n in steps}
    lo, hi = steps[0], steps[-1]
    clear = (
        gap[lo] >= 0.1 * s[f"trailing, S = {lo}"]
    )  # "clearly": linspace at least 10% further from the data
    t = results["trajectory"]
    phi = phi_factors(results["phi"])
    best = min(phi, key=lambda k: w1_mean(phi[k]))
    fid = results["fid"]["table"]
    return [
        Claim("Figure 4", f"trailing beats linspace clearly at S = {lo}, subtly at S = {hi}",
              f"mean W1 to the data, linspace - trailing: {gap[lo]:+.3f} at S = {lo} (trailing "
              f"{s[f'trailing, S = {lo}']:.3f}), {gap[hi]:+.3f} at S = {hi}", clear and gap[lo] > gap[hi]),
        Claim("Figure 5", "at t = T the prediction of x0 depends on the prompt, hardly on the noise",
              f"fixed: spread over noise seeds / over prompts = {t['fixed']['ratio']:.2f} (flawed, first step "
              f"t = {t['flawed']['first_timestep'] + 1}: {t['flawed']['ratio']:.2f})", t["fixed"]["ratio"] < 0.25),
        Claim("Figure 6", "phi = 0 (plain CFG) over-exposes; phi in 0.5-0.75 works best",
              f"saturated values: phi 0 {100 * phi['0']['saturated']:.1f}%, phi 0.7 {100 * phi['0.7']['saturated']:.1f}% "
              f"(data {100 * results['phi']['data']['saturated']:.1f}%); lowest mean W1 at phi = {best}",
              phi["0"]["saturated"] > phi["0.7"]["saturated"] and 0.5 <= float(best) <= 0.75),
        Claim("Table 3", "the fixes keep or improve FID (paper: 22.96 without, 21.66 with)",
              f"classifier-feature FID: flawed {fid['flawed']['fid']:.2f}, fixed {fid['fixed']['fid']:.2f} "
              f"(base {fid['base']['fid']:.2f}, data floor {fid['training data (a floor)']['fid']:.2f})",
              fid["fixed"]["fid"] <= fid["flawed"]["fid"]),
    ]  # fmt: skip


def claims(results: Mapping[str, Any]) -> list[Claim]:
    """The claims table from metrics.json's results (plain()): results["seed"] is the fine-tuning seed shown."""
    seed = str(results["seed"])
    d = results["demo"]
    fixed, flawed = d["fixed"]["seeds"][seed], d["flawed"]["seeds"][seed]
    a = results["ablations"]
    return [
        *schedule_claims(),
        *demo_claims(d, seed),
        *ablation_claims(results, fixed),
        *offset_claims(a["metrics"], flawed, fixed, d["data"]),
        *figure_claims(results),
    ]


def _ablation_table(results: Mapping[str, Any], seed: str) -> list[str]:
    d, a = results["demo"], results["ablations"]["metrics"]
    rows = {"data": d["data"], "flawed (demo)": d["flawed"]["seeds"][seed], "fixed (demo)": d["fixed"]["seeds"][seed],
            **a}  # fmt: skip
    head = "| model | dark mean | bright mean | extremes' W1 | unconditional W1 | < -0.7 / > +0.7 | worst noise | colour cos (min) |"
    lines = [head, "|---" * 8 + "|"]
    for name, s in rows.items():
        u = s["unconditional"]
        colour = [
            s[k]["colour_agreement"] for k in ("red", "blue", "green") if "colour_agreement" in s.get(k, {})
        ]
        w1 = "" if name == "data" else f"{_w1(s):.2f}"
        uw1 = "" if name == "data" else f"{u['wasserstein_to_reference']:.2f}"
        lines.append(f"| {name} | {s['dark']['mean']:+.2f} | {s['bright']['mean']:+.2f} | {w1} | {uw1} | "
                     f"{100 * u['frac_dark']:.0f}% / {100 * u['frac_bright']:.0f}% | "
                     f"{max(v['noise_median'] for v in s.values()):.3f} | {f'{min(colour):.2f}' if colour else ''} |")  # fmt: skip
    return lines


def plain(results: Any) -> Any:
    """metrics.json: numbers and strings only (image tensors are in the PNGs)."""
    if isinstance(results, Mapping):
        return {str(k): plain(v) for k, v in results.items() if k != "samples"}
    if isinstance(results, list | tuple):
        return [plain(v) for v in results]
    if isinstance(results, Path):
        return results.name
    return results if isinstance(results, int | float | str | bool | None) else str(results)


def write_paper_report(
    out: Path, results: Mapping[str, Any], setup: Mapping[str, Any]
) -> tuple[Path, list[Claim]]:
    """metrics.json (results, setup and claims) and report.md from plain() results; returns the report's path
    and the claims. `python -m zsnr.experiments.paper_report DIR` writes the report again from DIR/metrics.json."""
    rows = claims(results)
    seed = str(results["seed"])
    (out / "metrics.json").write_text(
        json.dumps({**results, "setup": dict(setup), "claims": [r.__dict__ for r in rows]}, indent=1)
    )
    agree = sum(r.agrees for r in rows)
    s, t, phi, fid = results["samplers"]["metrics"], results["trajectory"], results["phi"], results["fid"]
    demo_cfg_strip = t["strip_steps"]
    lines = [
        "# zsnr: the paper's claims in miniature", "",
        f"Command: `{setup['command']}` ({setup['minutes']:.1f} min). Lin et al., *Common Diffusion Noise Schedules "
        "and Sample Steps are Flawed* (arXiv 2305.08891), measured on the demo's 16 px pixel-space models "
        "(`make demo`: one flawed base, fine-tuned several ways from the same weights on the same data, seeds and "
        f"steps; fine-tuning seed {seed}).", "",
        f"## Claims: {agree} of {len(rows)} agree", "", *claims_table(rows), "",
        "## Tables 1 and 2, Figure 2: the schedules", "", (out / "schedules.md").read_text(), "",
        "![Figure 2](figure2_schedules.png)", "",
        "## Figure 3: the demo (all four fixes against none)", "",
        "`make demo`'s summary (its report.md has every table), brightness histograms and grids:", "",
        *summary_table(results["demo"], ["base", "flawed", "fixed"]), "",
        "![histograms](figure3_histograms.png)", "",
        "| base | flawed | fixed |", "|---|---|---|",
        "| ![base](figure3_grid_base.png) | ![flawed](figure3_grid_flawed.png) | ![fixed](figure3_grid_fixed.png) |", "",
        "## One fix removed at a time (section 3), and offset noise (section 5.4)", "",
        "Each arm is the fixed recipe with one fix taken out, fine-tuned from the same base for the same steps "
        "(or, for the sampling-time fixes, the fixed model sampled without it). Extremes' W1: the mean over the dark "
        "and bright sets of the Wasserstein-1 distance of the brightness distribution to the data's.", "",
        f"Sampling the epsilon model on the zero-SNR schedule from t = T: `{results['ablations']['refusal']}`", "",
        *_ablation_table(results, seed), "",
        *(f"**{name}**\n\n![{name}]({Path(p).name})\n" for name, p in results["ablations"]["grids"].items()),
        "## Figure 4: leading, linspace and trailing steps (fixed model, same seeds)", "",
        "| sampler | unconditional W1 | dark mean | bright mean | mean W1 (uncond., dark, bright) | noise (uncond.) |",
        "|---|---|---|---|---|---|",
        *(f"| {k} | {v['unconditional']['wasserstein_to_reference']:.3f} | {v['dark']['mean']:+.2f} | "
          f"{v['bright']['mean']:+.2f} | {sampler_score(v):.3f} | {v['unconditional']['noise_median']:.3f} |"
          for k, v in s.items()), "",
        "![Figure 4](figure4_samplers.png)", "",
        "## Figure 5: the prediction of x0 along the steps", "",
        "Spread of the predicted x0 at the first step: the standard deviation over noise seeds for one prompt "
        "against that over prompts (pixel units in [-1, 1]).", "",
        "| model | first timestep | over noise seeds | over prompts | ratio |", "|---|---|---|---|---|",
        *(f"| {m} | {v['first_timestep'] + 1} | {v['across_noise']:.3f} | {v['across_prompts']:.3f} | {v['ratio']:.2f} |"
          for m, v in t.items() if m in ("fixed", "flawed")), "",
        f"Predicted x0 at steps {', '.join(str(k + 1) for k in demo_cfg_strip)} (rows) for the prompts "
        f"{', '.join(repr(p) for p in t['prompts'])} (columns, noise seed 0); then the first prompt with three noise "
        "seeds (rows) along the same steps (columns):", "",
        "| fixed | flawed |", "|---|---|",
        f"| ![x0 fixed]({Path(t['fixed']['strip']).name}) | ![x0 flawed]({Path(t['flawed']['strip']).name}) |",
        f"| ![seeds fixed]({Path(t['fixed']['seeds']).name}) | ![seeds flawed]({Path(t['flawed']['seeds']).name}) |", "",
        "## Figure 6: CFG rescale phi at w = 7.5 (fixed model)", "",
        "Saturated: the share of channel values <= 3 or >= 252 on the prompt sets whose training images have none "
        f"(data: {100 * phi['data']['saturated']:.1f}%).", "",
        "| phi | saturated | brightness std | mean W1 over the prompt sets | W1 per set | colour cos (mean) |",
        "|---|---|---|---|---|---|",
        *(f"| {k} | {100 * v['saturated']:.1f}% | {v['brightness_std']:.2f} | {w1_mean(v):.3f} | "
          + ", ".join(f"{s} {w:.2f}" for s, w in v["w1"].items()) + f" | {v['colour_mean']:.2f} |"
          for k, v in phi_factors(phi).items()), "",
        "Two images per prompt set (dark, mid, bright, red, blue, green), the same seeds in every row:", "",
        "![Figure 6](figure6_phi.png)", "",
        "## Table 3 in miniature: FID and KID", "",
        f"{fid['n_reference']} held-out synthetic images (another seed) against one generated image per held-out caption "
        f"(DDIM, S = {results['fid'].get('num_steps', 50)}, w = 7.5, each model's own spacing and phi), in the feature "
        f"space of a classifier trained here on the synthetic data: {fid['classifier'].get('summary', fid['classifier'])}. "
        "FID is evaluation's own (zsnr.evaluation.fid, torchmetrics' maths); KID is torchmetrics'.", "",
        "| images | FID | KID (x 1000) | n |", "|---|---|---|---|",
        *(f"| {k} | {v['fid']:.2f} | {1000 * v['kid']:.2f} +- {1000 * v['kid_std']:.2f} | {v['n']} |"
          for k, v in fid["table"].items()), "",
    ]  # fmt: skip
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path, rows


def protocol_label(column: Mapping[str, Any]) -> str:
    """A protocol's column heading: its schedule against SD's, and how strongly the image mean leaks at t = T."""
    shift = column["snr_shift"]
    schedule = "SD's schedule" + ("" if shift == 1 else f" x {shift:g}")
    return f"{schedule} (leak {column['leak']:.3g} of SD 2.1's)"


def write_protocols_report(
    out: Path, columns: Mapping[str, Mapping[str, Any]], setup: Mapping[str, Any]
) -> tuple[Path, dict[str, list[Claim]]]:
    """out/report.md and out/metrics.json: the claims table with one column per protocol (each measured in
    out/<protocol>/, which has its full report), every demo family's checks and Figures 3-5 side by side; returns
    the report's path and each protocol's claims."""
    rows = {name: [Claim(**c) for c in col["claims"]] for name, col in columns.items()}
    names = list(columns)
    first = [(c.section, c.paper) for c in rows[names[0]]]
    if any([(c.section, c.paper) for c in rows[n]] != first for n in names):
        raise ValueError("the protocols' claims differ: every column must measure the same claims")
    (out / "metrics.json").write_text(json.dumps({"protocols": columns, "setup": dict(setup)}, indent=1))
    label = {n: protocol_label(columns[n]) for n in names}
    agree = {n: f"{sum(r.agrees for r in rows[n])} of {len(rows[n])}" for n in names}
    table = [
        "| where | the paper | " + " | ".join(f"{label[n]}: measured | agrees" for n in names) + " |",
        "|---|---|" + "---|---|" * len(names),
        *(f"| {section} | {paper} | " + " | ".join(f"{rows[n][i].measured} | {'yes' if rows[n][i].agrees else '**no**'}"
                                                  for n in names) + " |"
          for i, (section, paper) in enumerate(first)),
    ]  # fmt: skip
    families = [
        "| protocol | family | demo checks | data dark / bright | flawed dark / bright | fixed dark / bright | "
        "checks that fail |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        for family, f in columns[n]["families"].items():
            m = {k: f"{v['dark']:+.2f} / {v['bright']:+.2f}" for k, v in f["means"].items()}
            ok = sum(c["ok"] for c in f["checks"])
            failed = (
                "; ".join(f"{c['claim']} ({c['value']:.2f})" for c in f["checks"] if not c["ok"]) or "none"
            )
            families.append(f"| {n} | {family} | {ok} of {len(f['checks'])} | {m['data']} | {m['flawed']} | "
                            f"{m['fixed']} | {failed} |")  # fmt: skip
    side = lambda png: "| " + " | ".join(f"![{n}]({n}/{png})" for n in names) + " |"  # noqa: E731
    head = ["| " + " | ".join(label[n] for n in names) + " |", "|---" * len(names) + "|"]
    lines = [
        "# zsnr: the paper's claims in miniature", "",
        f"Command: `{setup['command']}` ({setup['minutes']:.1f} min). Lin et al., *Common Diffusion Noise Schedules "
        "and Sample Steps are Flawed* (arXiv 2305.08891), measured on the demo's 16 px pixel-space models under "
        f"{len(names)} protocols, one column each. A protocol is the demo (`make demo`: one flawed base, fine-tuned "
        "several ways from the same weights on the same data, seeds and steps) trained on one schedule; what differs "
        "is how strongly the image mean leaks into x_T (in SNR, against SD 2.1 at its 64 x 64 latents: at 16 px SD's "
        "own schedule leaks 1/16 as strongly, so a prompt can override the flaw on easy data). Each protocol's "
        "full report has every table and figure: "
        + ", ".join(f"[{n}: {label[n]}]({n}/report.md) ({columns[n]['minutes']:.1f} min)" for n in names) + ".", "",
        f"## Claims: {'; '.join(f'{n}: {agree[n]}' for n in names)} agree", "", *table, "",
        "## Figure 3 on every data family", "",
        "The demo's checks (the same thresholds for every family and protocol) and the mean brightness of the "
        "extremes (mean over fine-tuning seeds):", "", *families, "",
        "The flawed and fixed models' grids (the family the sections measure):", "",
        *head, side("figure3_grid_flawed.png"), side("figure3_grid_fixed.png"), "",
        "## Figure 4: leading, linspace and trailing steps", "", *head, side("figure4_samplers.png"), "",
        "## Figure 5: the prediction of x0 along the steps (fixed, then flawed)", "",
        *head, side("figure5_x0_fixed.png"), side("figure5_x0_flawed.png"), "",
    ]  # fmt: skip
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path, rows


if __name__ == "__main__":
    import sys

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/paper")
    saved = json.loads((folder / "metrics.json").read_text())
    setup = saved.pop("setup")
    if "protocols" in saved:
        print(write_protocols_report(folder, saved["protocols"], setup)[0])
    else:
        saved.pop("claims")
        print(write_paper_report(folder, saved, setup)[0])
