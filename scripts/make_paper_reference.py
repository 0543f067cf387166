"""The paper's published numbers (the ACML 2021 main text and supplement: Tables 2-6 and the
appendix's in-text results), transcribed once into results/paper_reference.csv: one row per
number, with the setting as config keys so that `bilevel-bench-report paper` can match runs to it.
    python scripts/make_paper_reference.py
"""

import csv
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "results" / "paper_reference.csv"
# the tables below keep the paper's rows on one line each
# fmt: off

ROWS = []
def add(table, row, column, task, dataset, setting, solver, metric, value, sd="", spread="", n="", kind="ours", note=""):
    ROWS.append(dict(table=table, row=row, column=column, task=task, dataset=dataset, setting=setting,
                     solver=solver, metric=metric, value=value, sd=sd, spread=spread, n=n, kind=kind, note=note))

# ---- Table 2: denoising
T2 = "Table 2"
nets = {"mnist": ("mnist_cnn", 101), "cifar10": ("cifar10_cnn", 200), "svhn": ("svhn_cnn", 101)}
t2 = [
    ("MNIST (25%)", "mnist", 0.25, [(99.3, 0.1), (94.6, 0.3), (83.9, 1.3), (98.11, 0.08), (98.89, 0.04)]),
    ("MNIST (50%)", "mnist", 0.5, [(99.3, 0.1), (94.6, 0.3), (60.8, 2.5), (97.27, 0.15), (97.51, 0.07)]),
    ("CIFAR10 (25%)", "cifar10", 0.25, [(82.9, 1.1), (70.3, 1.8), (79.1, 0.8), (71.59, 0.87), (79.67, 1.01)]),
    ("CIFAR10 (50%)", "cifar10", 0.5, [(80.7, 1.2), (70.3, 1.8), (72.2, 1.8), (68.08, 0.83), (79.03, 1.19)]),
    ("SVHN (25%)", "svhn", 0.25, [(91.1, 0.5), (70.6, 1.5), (71.6, 1.4), (80.05, 1.37), (88.12, 0.16)]),
    ("SVHN (50%)", "svhn", 0.5, [(89.8, 0.6), (70.6, 1.5), (47.9, 1.3), (74.18, 1.05), (85.21, 0.34)]),
]
columns = [("Oracle", "erm", "oracle"), ("Val-Only", "erm", "val_only"), ("Train+Val", "erm", "train_val"),
           ("ApproxGrad", "approxgrad", ""), ("Penalty", "penalty", "")]
for row, dataset, noise, values in t2:
    model, epochs = nets[dataset]
    for (column, solver, baseline), (value, sd) in zip(columns, values, strict=True):
        setting = f"model.name={model};task.noise={noise};task.epochs={epochs}"
        if baseline:
            setting += f";baseline={baseline}"
        note = ("MNIST at the paper's budget (101 epochs of the authors' CNN, 59k training images) "
                "is a GPU run: the GPU issue" if dataset == "mnist" else "")
        add(T2, row, column, "denoise", dataset, setting, solver, "test_acc", value, sd, "sd", 5, note=note)

# ---- App. D.1.1 (Franceschi et al. setting) and the other in-text denoising numbers
D11 = "App. D.1.1"
small = "model.name=logreg;dataset.train_size=5000;dataset.val_size=5000;task.noise=0.5;task.epochs=100"
add(D11, "MNIST 5000/5000, 50% noise", "Penalty", "denoise", "mnist", small + ";solver.T=20", "penalty", "retrain_test_acc", 90.77, n=1,
    note="retrained on importance > 0.9 plus validation")
add(D11, "MNIST 5000/5000, 50% noise", "RMD (Franceschi et al.)", "denoise", "mnist", small, "rmd", "retrain_test_acc", 90.09, n=1,
    note="Franceschi et al.'s number as the paper quotes it; ours retrained as Penalty")
add(D11, "MNIST 5000/5000, 50% noise", "Val-Only", "denoise", "mnist", small + ";baseline=val_only", "erm", "test_acc", 90.54, n=1)
add(D11, "MNIST 5000/5000, 50% noise", "Train+Val", "denoise", "mnist", small + ";baseline=train_val", "erm", "test_acc", 86.25, n=1)
add(D11, "MNIST 5000/5000, 50% noise", "Oracle", "denoise", "mnist", small + ";baseline=oracle", "erm", "test_acc", 91.06, n=1)
WRN = "App. D.1 (WRN-28-10)"
wrn = "task.noise=0.36;dataset.val_size=1000"
add(WRN, "CIFAR10, 36% uniform flips", "Penalty", "denoise", "cifar10", wrn + ";model.name=wrn_28_10", "penalty", "test_acc", 87.41, 0.26, "sd", 5,
    note="needs a WRN-28-10 (not built here) and CIFAR-10")
add(WRN, "CIFAR10, 36% uniform flips", "Ren et al.", "denoise", "cifar10", wrn, "ren_et_al", "test_acc", 86.92, kind="cited")
add(WRN, "CIFAR10, 36% uniform flips", "Shu et al. (Meta-Weight-Net)", "denoise", "cifar10", wrn, "shu_et_al", "test_acc", 89.27, kind="cited")
CLEAN = "App. E.2 (clean data)"
for dataset, value in (("mnist", 99.5), ("cifar10", 86.2), ("svhn", 91.23)):
    model, epochs = nets[dataset]
    add(CLEAN, "clean-data accuracy", dataset, "denoise", dataset, f"model.name={model};task.noise=0.0;baseline=noisy",
        "erm", "test_acc", value, note="the network trained on all clean training labels")

# ---- Table 3: few-shot
T3 = "Table 3"
t3 = [
    ("Omniglot 5-way 1-shot", "omniglot", 5, 1, "sd", ["98.7", "99.50 0.26", "98.8", "99.6 0.2", "99.1", "98.6", "97.75 0.06", "97.83 0.35"]),
    ("Omniglot 5-way 5-shot", "omniglot", 5, 5, "sd", ["99.9", "99.74 0.11", "99.7", "99.8 0.1", "99.8", "99.5", "99.51 0.05", "99.45 0.05"]),
    ("Omniglot 20-way 1-shot", "omniglot", 20, 1, "sd", ["95.8", "96.18 0.36", "96.0", "97.6 0.2", "97.6", "95.5", "94.69 0.22", "94.06 0.17"]),
    ("Omniglot 20-way 5-shot", "omniglot", 20, 5, "sd", ["98.9", "99.14 0.10", "98.9", "99.1 0.1", "99.4", "98.4", "98.46 0.08", "98.47 0.08"]),
    ("Mini-ImageNet 5-way 1-shot", "miniimagenet", 5, 1, "ci95", ["48.70 1.75", "49.30 1.88", "49.42 0.78", "50.44 0.82", "55.71 0.99", "50.54 0.85", "43.74 1.75", "53.17 0.96"]),
    ("Mini-ImageNet 5-way 5-shot", "miniimagenet", 5, 5, "ci95", ["63.11 0.92", "", "68.20 0.66", "65.32 0.82", "68.88 0.92", "64.53 0.68", "65.56 0.67", "67.74 0.71"]),
]
methods = [("MAML", "maml", "cited"), ("iMAML", "imaml", "cited"), ("Proto Net", "protonet", "cited"),
           ("Rel Net", "relnet", "cited"), ("SNAIL", "snail", "cited"), ("RMD", "rmd", "ours"),
           ("ApproxGrad", "approxgrad", "ours"), ("Penalty", "penalty", "ours")]
for row, dataset, ways, shots, spread, values in t3:
    iters = {("omniglot", 5): 5000, ("omniglot", 20): 10000, ("miniimagenet", 5): 20001}[dataset, ways]
    setting = f"task.ways={ways};task.shots={shots};task.iters={iters}"
    for (column, solver, kind), text in zip(methods, values, strict=True):
        if not text:
            continue
        value, *sd = text.split()
        note = ("Omniglot at the paper's budget (5000-10000 meta-iterations, meta-batch 15-30) is a "
                "GPU run; the CPU runs here (results/fewshot) used 100 meta-iterations"
                if dataset == "omniglot" and kind == "ours" else "")
        if solver == "rmd":  # the authors' few-shot code has no RMD
            note = ("the numbers Franceschi et al. (2018) published for RMD (their network and "
                    "budget); " + note).rstrip("; ")
        add(T3, row, column, "fewshot", dataset, setting, solver, "test_acc", value, sd[0] if sd else "",
            spread if sd else "", 5 if kind == "ours" else "", kind, note)

# ---- Table 5: MNIST poisoning
T5 = "Table 5"
BUDGET = ("the paper's budget (5000 upper iterations, retraining 10001 steps) takes hours per run "
          "on this CPU; results/poison has 100-iteration runs")
t5 = [
    ("1%", 10, "86.71 0.32", "85", "82.09 0.84", "83.29 0.43", "7.76 1.07", "10", "18.84 1.90", "17.40 3.00"),
    ("2%", 20, "86.23 0.98", "83", "77.54 0.57", "78.14 0.53", "12.08 2.13", "15", "39.64 3.72", "41.64 4.43"),
    ("3%", 30, "85.17 0.96", "82", "74.41 1.14", "75.14 1.09", "18.36 1.23", "25", "52.76 2.69", "51.40 2.72"),
    ("4%", 40, "84.93 0.55", "81", "71.88 0.40", "72.70 0.46", "24.41 2.05", "35", "60.01 1.61", "61.16 1.34"),
    ("5%", 50, "84.39 1.06", "80", "68.69 0.86", "69.48 1.93", "30.41 4.24", "", "65.61 4.01", "65.52 2.85"),
    ("6%", 60, "84.64 0.69", "79", "66.91 0.89", "67.59 1.17", "32.88 3.47", "", "71.48 4.24", "70.01 2.95"),
]
for row, poisons, *cells in t5:
    un = f"task.attack=untargeted;task.num_poisons={poisons};task.iters=5000"
    tg = f"task.attack=targeted;task.num_poisons={poisons};task.iters=5001"
    spec = [
        ("label flips (untargeted)", un, "penalty", "flip_test_acc", "ours", "label flips: the baseline every run retrains beside its attack"),
        ("RMD (untargeted)", un, "rmd_munoz_gonzalez", "test_acc", "cited", "Munoz-Gonzalez et al. (2017), quoted by the paper"),
        ("ApproxGrad (untargeted)", un, "approxgrad", "test_acc", "ours", BUDGET),
        ("Penalty (untargeted)", un, "penalty", "test_acc", "ours", BUDGET),
        ("label flips (targeted)", tg, "penalty", "flip_target_success", "ours", "label flips: the baseline every run retrains beside its attack"),
        ("RMD (targeted)", tg, "rmd_munoz_gonzalez", "target_success", "cited", "Munoz-Gonzalez et al. (2017), quoted by the paper"),
        ("ApproxGrad (targeted)", tg, "approxgrad", "target_success", "ours", BUDGET),
        ("Penalty (targeted)", tg, "penalty", "target_success", "ours", BUDGET),
    ]
    for (column, setting, solver, metric, kind, note), text in zip(spec, cells, strict=True):
        if not text:
            continue
        value, *sd = text.split()
        add(T5, row, column, "poison", "mnist", setting, solver, metric, value, sd[0] if sd else "",
            "sd" if sd else "", 5 if sd else "", kind, note)

# ---- Table 6: untargeted, 60 points, penalty's hyper-parameters
T6 = "Table 6"
base = "task.attack=untargeted;task.num_poisons=60;task.iters=5000"
for row, setting, value, sd in [
    ("lambda0 = 0", "solver.lam0=0", 67.87, 1.35), ("lambda0 = 1", "solver.lam0=1", 68.21, 1.78),
    ("lambda0 = 10", "solver.lam0=10", 68.18, 1.04), ("lambda0 = 100", "solver.lam0=100", 67.59, 1.17),
    ("with nu", "solver.multiplier=true", 67.59, 1.17), ("without nu", "solver.multiplier=false", 68.82, 0.75),
    ("gamma0 = 1", "solver.gamma0=1", 73.38, 4.98), ("gamma0 = 10", "solver.gamma0=10", 67.59, 1.17),
    ("gamma0 = 100", "solver.gamma0=100", 71.96, 3.56),
]:
    add(T6, row, "Penalty", "poison", "mnist", base + ";" + setting, "penalty", "test_acc", value, sd, "sd", 5, note=BUDGET)

# ---- Table 4: synthetic wall-clock, seconds per 10,000 upper iterations
T4 = "Table 4"
t4 = {
    ("smd20", 1): ["7.4 0.3", "15.0 0.1", "17.4 0.2", "17.2 0.1"], ("smd20", 5): ["14.3 0.1", "51.4 0.3", "39.3 2.3", "34.3 0.3"],
    ("smd20", 10): ["23.2 0.1", "95.4 0.2", "60.9 0.3", "57.0 1.0"], ("smd21", 1): ["7.7 0.1", "18.5 0.1", "17.2 0.3", "17.4 0.2"],
    ("smd21", 5): ["17.3 0.1", "62.7 0.1", "37.9 0.1", "35.0 0.2"], ("smd21", 10): ["22.4 2.6", "115.0 0.4", "64.2 0.3", "52.7 1.4"],
    ("smd23", 1): ["8.2 0.2", "18.8 0.1", "19.8 0.1", "19.1 0.1"], ("smd23", 5): ["17.4 0.1", "72.4 0.1", "47.1 0.4", "38.6 0.4"],
    ("smd23", 10): ["28.7 0.6", "125.0 9.3", "80.6 0.3", "62.7 0.1"], ("smd24", 1): ["7.9 0.1", "19.5 0.1", "20.4 0.0", "19.6 0.1"],
    ("smd24", 5): ["16.9 0.2", "72.8 0.5", "48.4 0.6", "40.2 0.1"], ("smd24", 10): ["28.3 0.2", "138.0 0.2", "81.2 1.6", "58.0 4.3"],
}
example = {"smd20": 1, "smd21": 2, "smd23": 3, "smd24": 4}
for (dataset, T), cells in t4.items():
    for (column, solver), text in zip([("GD", "alternating"), ("RMD", "rmd"), ("ApproxGrad", "approxgrad"), ("Penalty", "penalty")], cells, strict=True):
        value, sd = text.split()
        add(T4, f"example {example[dataset]} ({dataset}), T = {T}", column, "synthetic", dataset,
            f"solver.T={T};task.iters=10000", solver, "runtime_s", value, sd, "sd", 10,
            note="TensorFlow, Intel i9-7920X / TITAN RTX: compare ratios to GD only")

# ---- clean-label dog-fish (Sec. 3.4): the only number is the clean model's accuracy
add("Sec. 3.4 (clean-label)", "dog-fish, clean model", "clean test accuracy", "poison", "dogfish", "task.attack=clean_label",
    "penalty", "clean_test_acc", 98.33, note="the success rates are a plot only (Fig. 3)")

# fmt: on
with open(OUT, "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(ROWS[0]))
    writer.writeheader()
    writer.writerows(ROWS)
print(len(ROWS))
