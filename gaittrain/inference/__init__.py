"""Inference: a trained model put to use on people, apart from protocol scoring.

``identify`` ranks the people of a gallery for one raw sequence (or a camera's video),
``gallery`` keeps named people in an embeddings file (add, list, remove), ``export`` writes the
embedding model as ONNX. They load a run's model through :mod:`gaittrain.trained_model` and read
and write embeddings through :mod:`gaittrain.evaluation.embeddings_file`; evaluation never imports
them.
"""
