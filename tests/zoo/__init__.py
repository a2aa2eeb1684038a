"""The bug zoo: test material, not part of the package users import (see catalogue.py)."""
