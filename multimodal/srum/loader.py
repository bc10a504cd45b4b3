"""placeholder"""
def load(path, config):
    raise NotImplementedError
def load_tokenizer(spec):
    raise NotImplementedError
