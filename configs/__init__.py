"""The shipped configs and studies (this folder, installed as the package ``gaitconfigs``).

Nothing to import: :mod:`gaittrain.shipped` lists them and finds them by name
(``gait configs list``, ``gait train tiny``, ``gait study loss-demo``).
"""
