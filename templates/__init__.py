"""mailmag's Jinja2 templates, installed as the package ``subscriptions.templates``.

Nothing to import: the package exists so that ``importlib.resources`` finds the templates
(``subscriptions/paths.py``) in a checkout and in an installed wheel alike (setup.py maps
this directory into ``subscriptions``).
"""
