"""Entry points for code that already trains: a plain PyTorch loop (loop.py) and a Lightning
Trainer callback (lightning.py, which imports lightning only when used)."""
