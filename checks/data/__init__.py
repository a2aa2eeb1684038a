"""Stage `data`: checks that read the splits (integrity, sizes, balance, leakage between splits,
normalisation, label signal, label noise, shift between splits). They run no training."""
