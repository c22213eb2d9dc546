"""The parity suite: the PyTorch path against the TFRS path, with shared weights and batches.

Groups (one test module each): 1 features, 2 forward, 3 losses and gradients, 4 training
trajectory, 5 metrics, 6 index; ``test_breaks`` applies deliberate semantic breaks and expects
the same checks to fail. The checks themselves live in :mod:`parity_tests.checks` so the break
tests run exactly the code the parity tests run.
"""
