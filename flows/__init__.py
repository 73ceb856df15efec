"""Prefect flows of constellation (the only code that imports prefect or ray).

Empty for now: the flows arrive with the orchestration issue. The library
(``constellation``) never imports this package.
"""
