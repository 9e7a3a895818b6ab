"""gaitprep: raw silhouette data in, normalized frames and HDF5 packs out.

``gaitprep`` never imports ``gaittrain``; the pack format (docs/pack-format.md) is the contract
between them.
"""

__version__ = "0.1.0"
