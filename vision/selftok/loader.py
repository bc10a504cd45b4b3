"""placeholder"""


def load(path, config):
    raise NotImplementedError
