"""The model store: names and entries, Modelfiles, a model's chat settings. Imports text and the
torch-free parts of model (hfdir) at import time; no torch."""
