"""The paper reproduction (arXiv 2505.09214, section VI): `scripts/reproduce_paper`."""
