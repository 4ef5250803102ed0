"""Agora (de Wynter, arXiv 2010.07990) and the plain grid search it is compared with."""
