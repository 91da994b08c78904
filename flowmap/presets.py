"""Training presets per built-in data set (the shipped models' recipes start here)."""

PRESETS: dict[str, dict] = {
    "gmm8": {"arch": "mlp", "width": 256, "depth": 3, "batch_size": 256, "lr": 1e-3},
    "digits": {"arch": "mlp", "width": 512, "depth": 4, "batch_size": 256, "lr": 5e-4},
    "mnist": {
        "arch": "unet",
        "width": 32,
        "mults": "1,2,4",
        "batch_size": 128,
        "lr": 1e-3,
        "precision": "bf16",
    },
}
