"""The real-bug track: publicly reported training bugs, each ported as a buggy/fixed pipeline pair
(see catalogue.py)."""
