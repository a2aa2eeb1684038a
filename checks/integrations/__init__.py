"""Entry points for code that already trains: a plain PyTorch loop (loop.py), a Lightning
Trainer callback (lightning.py) and a Hugging Face Trainer callback (huggingface.py); each imports its
framework only when used."""
