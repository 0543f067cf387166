"""Errors for missing or corrupt data: the message names the dataset, the path and the fix."""


class DatasetError(FileNotFoundError):
    pass


def download_or_explain(dataset: str, missing: str, target, download: bool, fetch, hint: str):
    """The data are missing: run torchvision's `fetch()` into `target` when data.download=true,
    else (or when the download fails, e.g. offline) raise one error that names the dataset, what
    is missing and the fix."""
    if not download:
        raise DatasetError(f"{dataset} not found: {missing}, and data.download=false; {hint}")
    try:
        fetch()
    except Exception as err:
        raise DatasetError(f"{dataset} download into {target} failed ({err}); {hint}") from err
