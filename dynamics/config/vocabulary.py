"""Command-line choices owned by modules that import torch (launch, sampling, TAS).

They are defined here so the parser is built from the config package alone; each owning module imports its
words from here, so the parser's choices and the module's checks cannot drift apart.
"""

EXECUTORS = ("debug", "local", "slurm")  # dynamics.launch
SAMPLING_MODES = ("u", "v")  # dynamics.meanflow.sampling.generate: few-step with u | Euler with v = u(z, t, t)
TAS_METHODS = ("accumulated", "lookahead", "cosine")  # dynamics.affinity; the first is the default
TAS_OPTIMIZERS = ("sgd", "sgd-length", "adam")  # dynamics.affinity: the lookahead step
