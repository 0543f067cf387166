"""Errors for missing or corrupt data: the message names the dataset, the path and the fix."""


class DatasetError(FileNotFoundError):
    pass
