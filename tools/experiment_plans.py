#!/usr/bin/env python3
"""Writes plans/exp*.toml, the paper's four experiments as fedseg job plans.

The sweeps of Exp. 3 are dozens of near-identical stages; generating them keeps the plans
consistent. Run `python3 tools/experiment_plans.py` after changing this file; a test checks
that every plan in plans/ parses (and that this script's output matches what is committed).
"""
from pathlib import Path

TARGETS = ["mscmr", "vh", "stpau"]
ALL = ["emidec"] + TARGETS
OUT = Path(__file__).resolve().parent.parent / "plans"


# Epochs are small so that two seeds of all four experiments run in about 75 minutes on two
# CPU cores with the `cpu` model; at paper size raise them (the paper trained to convergence).
def header(name, doc, repeats=2, epochs=6):
    lines = [f"# {l}".rstrip() for l in doc.strip().splitlines()]
    return "\n".join(lines) + f'''
name = "{name}"
model = "cpu"             # the U-Net every site builds: tiny | cpu | paper (GPU)
seed = 1
repeats = {repeats}               # `coordinator simulate` runs the job this often, seeds 1, 2, ...

[defaults]
epochs = {epochs}
batch_size = 8
learning_rate = 2e-3
augment = "spatial+intensity"
round_timeout_s = 7200
grace_s = 60
'''


def stage(name, kind, sites, **kw):
    s = f'\n[[stage]]\nname = "{name}"\nkind = "{kind}"\nsites = {toml_list(sites)}\n'
    for k, v in kw.items():
        if isinstance(v, list):
            s += f"{k} = {toml_list(v)}\n"
        elif isinstance(v, str):
            s += f'{k} = "{v}"\n'
        else:
            s += f"{k} = {v}\n"
    return s


def figure(name, kind, title, models, x=None, xs=None):
    s = f'\n[[figure]]\nname = "{name}"\nkind = "{kind}"\ntitle = "{title}"\nmodels = {toml_list(models)}\n'
    if x is not None:
        s += f'x = "{x}"\nxs = {toml_list(xs)}\n'
    return s


def toml_list(items):
    return "[" + ", ".join(f'"{i}"' if isinstance(i, str) else repr(i) for i in items) + "]"


def exp1():
    t = header("exp1-augmentation", """
Experiment 1 (paper §3.1, Fig. 6, Table 5 columns 1-3): the effect of data augmentation.
Single-center models trained at EMIDEC-like without augmentation, with spatial augmentation,
and with spatial + intensity augmentation, each evaluated on every center's test split.
The paper's split (Table 2): EMIDEC 68 train / 17 val / 15 test; on real data set it in
each site's site.toml [split].
""")
    for name, aug in [("no-aug", "none"), ("spatial", "spatial"), ("spatial+int", "spatial+intensity")]:
        t += stage(name, "train", ["emidec"], augment=aug)
    t += stage("eval", "evaluate", ALL, models=["no-aug", "spatial", "spatial+int"])
    t += figure("fig6", "bars", "Exp. 1: augmentation (LV Dice per test center)",
                ["no-aug", "spatial", "spatial+int"])
    return t


def exp2():
    t = header("exp2-histogram-matching", """
Experiment 2 (paper §3.2, Fig. 7, Table 5 column 5): image harmonization by histogram
matching. The augmented single-center model of Exp. 1, evaluated at the other centers as is
and with each test image's histogram matched to EMIDEC-like's training histogram (101
quantiles computed by a `stats` stage: a statistic leaves the site, never an image).
The paper's CycleGAN harmonization is not part of fedseg.
""")
    t += stage("hist", "stats", ["emidec"])
    t += stage("spatial+int", "train", ["emidec"])
    t += stage("plain", "evaluate", ALL, models=["spatial+int"])
    t += stage("hist-match", "evaluate", TARGETS, models=["spatial+int"], hist_ref="hist:emidec")
    t += figure("fig7", "bars", "Exp. 2: histogram matching (LV Dice per test center)",
                ["plain/spatial+int", "hist-match/spatial+int"])
    return t


def exp3():
    t = header("exp3-transfer-learning", """
Experiment 3 (paper §3.3, Figs. 8-10, Table 5 column 6): transfer learning. A model
pretrained at EMIDEC-like is fine-tuned at each target center:
  - Fig. 8: encoder blocks 0..k (k = 1..all) or decoder blocks 0..k fine-tuned, the rest frozen,
    next to a model trained at the target alone (the paper's black line);
  - Fig. 10: the encoder minus the bottleneck fine-tuned on 10 %...100 % of the target's
    training subjects, from the EMIDEC-like model and from a model pretrained on synthetic cine
    MRI (`mnms`, standing in for the paper's M&Ms pretraining).
Block ranges are for the `cpu` model (5 levels: encoder blocks 0-4, decoder blocks 0-3); for
the paper model (6 levels) add enc:0-5 and dec:0-4 stages. `last` counts from the deepest block.
""", repeats=2, epochs=4)
    t += stage("pretrain", "train", ["emidec"])
    t += stage("cine", "train", ["mnms"])
    enc = ["enc:0-0", "enc:0-1", "enc:0-2", "enc:0-3", "enc:0-4"]
    dec = ["dec:0-0", "dec:0-1", "dec:0-2", "dec:0-3"]
    fractions = [0.1, 0.25, 0.5, 1.0]
    ft = dict(epochs=2)
    for site in TARGETS:
        t += stage(f"scratch-{site}", "train", [site])
        for i, e in enumerate(enc):
            t += stage(f"enc{i + 1}-{site}", "finetune", [site], **{"from": "pretrain"}, trainable=e, **ft)
        for i, d in enumerate(dec):
            t += stage(f"dec{i + 1}-{site}", "finetune", [site], **{"from": "pretrain"}, trainable=d, **ft)
        for f in fractions:
            pct = int(f * 100)
            t += stage(f"frac{pct}-{site}", "finetune", [site], **{"from": "pretrain"},
                       trainable="enc:0-last-1", train_fraction=f, **ft)
            t += stage(f"cine{pct}-{site}", "finetune", [site], **{"from": "cine"},
                       trainable="enc:0-last-1", train_fraction=f, **ft)
    models = (["pretrain", "scratch-{site}"]
              + [f"enc{i + 1}-{{site}}" for i in range(len(enc))]
              + [f"dec{i + 1}-{{site}}" for i in range(len(dec))]
              + [f"frac{int(f * 100)}-{{site}}" for f in fractions]
              + [f"cine{int(f * 100)}-{{site}}" for f in fractions])
    t += stage("eval", "evaluate", TARGETS, models=models)
    t += figure("fig8-encoder", "sweep", "Exp. 3: encoder blocks fine-tuned",
                [f"enc{i + 1}-{{site}}" for i in range(len(enc))],
                x="encoder blocks fine-tuned", xs=list(range(1, len(enc) + 1)))
    t += figure("fig8-decoder", "sweep", "Exp. 3: decoder blocks fine-tuned",
                [f"dec{i + 1}-{{site}}" for i in range(len(dec))],
                x="decoder blocks fine-tuned", xs=list(range(1, len(dec) + 1)))
    t += figure("fig10-fraction", "sweep", "Exp. 3: share of the target's training data",
                [f"frac{int(f * 100)}-{{site}}" for f in fractions],
                x="% of target training subjects", xs=[int(f * 100) for f in fractions])
    t += figure("fig10-cine", "sweep", "Exp. 3: pretrained on cine MRI",
                [f"cine{int(f * 100)}-{{site}}" for f in fractions],
                x="% of target training subjects", xs=[int(f * 100) for f in fractions])
    t += figure("fig9", "bars", "Exp. 3: fine-tuned vs trained at the target",
                ["pretrain", "scratch-{site}", "frac10-{site}", "frac100-{site}"])
    return t


def exp4():
    t = header("exp4-multi-center", """
Experiment 4 (paper §3.4, Figs. 9 and 11, Table 5 column 7): multi-center training.
FedAvg over the Table 4 combinations of centers, each next to a pooled baseline trained
centrally on the same subjects in one place, to measure the price of federation. A site named
`pool-A-B` exists only in simulation: `coordinator simulate` builds it from links to centers
A and B's training and validation subjects (never their test subjects). The pooled model
trains for rounds x epochs epochs, as many passes over the data as the federated one.
On real data the paper balanced the combinations (Table 4: EMIDEC 42/10, EMIDEC+MSCMR
21+21/5+5, ...); set `train_fraction` per stage to do the same.
""", repeats=2)
    combos = {
        "e": ["emidec"],
        "em": ["emidec", "mscmr"],
        "ev": ["emidec", "vh"],
        "emv": ["emidec", "mscmr", "vh"],
        "all": ["emidec", "mscmr", "vh", "stpau"],
    }
    rounds, epochs = 3, 1
    for name, sites in combos.items():
        if len(sites) == 1:
            t += stage(f"fed-{name}", "train", sites, epochs=rounds * epochs)
        else:
            t += stage(f"fed-{name}", "fedavg", sites, rounds=rounds, epochs=epochs)
            t += stage(f"pooled-{name}", "train", ["pool-" + "-".join(sites)],
                       epochs=rounds * epochs)
    models = [f"fed-{n}" for n in combos] + [f"pooled-{n}" for n in combos if len(combos[n]) > 1]
    t += stage("eval", "evaluate", ALL, models=models)
    t += figure("fig11", "bars", "Exp. 4: FedAvg over more centers (LV Dice per test center)",
                [f"fed-{n}" for n in combos])
    t += figure("price", "bars", "Exp. 4: FedAvg vs pooled over all four centers",
                ["fed-all", "pooled-all"])
    t += figure("rounds", "rounds", "Exp. 4: validation Dice per round",
                [f"fed-{n}" for n in combos if len(combos[n]) > 1])
    return t


def main():
    for name, text in [("exp1-augmentation", exp1()), ("exp2-histogram-matching", exp2()),
                       ("exp3-transfer-learning", exp3()), ("exp4-multi-center", exp4())]:
        (OUT / f"{name}.toml").write_text(text)
        print(f"wrote plans/{name}.toml")


if __name__ == "__main__":
    main()
