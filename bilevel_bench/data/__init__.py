"""Dataset loaders (torchvision layouts, offline roots) and the generated test sets."""

# Keys of the dataset section that a loader reads when present, with its own default otherwise;
# no dataset YAML need set them, so they are passed with '+' (the CLI refuses other added keys).
OPTIONAL_KEYS = frozenset(
    {
        "characters",  # omniglot.py: how many characters a copy must hold (null: any number)
        "greyscale",  # images.py: colour images to luma (svhn.yaml sets it)
        "train_size",  # images.py: training points kept after the validation split
        "balanced_val",  # images.py: a class-balanced validation split
    }
)
