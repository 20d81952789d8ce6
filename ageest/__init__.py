"""ageest: reproducibility kit for the Adaptive Mean-Residue loss and its peers in age estimation.

Zhao, Qian, Hou, Zeng. *Adaptive Mean-Residue Loss for Robust Facial Age Estimation.* ICME 2022,
arXiv 2203.17156.
"""

__version__ = "0.1.0"
