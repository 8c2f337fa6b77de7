"""Central finite differences, the oracle of the reference tests' gradient checks."""

import numpy as np


def central(f, x, E, h=1e-6):
    """(f(x + h E) - f(x - h E)) / (2 h): the derivative of f at x along E."""
    return (f(x + h * E) - f(x - h * E)) / (2 * h)


def fd_grad(f, x, h=1e-6):
    """The gradient of a scalar f at x, one central difference per entry."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        E = np.zeros_like(x)
        E[i] = 1.0
        g[i] = central(f, x, E, h)
    return g
