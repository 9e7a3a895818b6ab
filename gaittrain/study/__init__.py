"""``gait study``: a grid of ordinary training runs declared in YAML, trained, evaluated and
summarized with statistics across seeds.

``spec`` reads and expands the study file, ``runner`` trains and evaluates the runs (resumable),
``cache`` keeps each run's evaluation results, ``stats`` holds the statistics, ``summary`` writes
study.json and ``report`` study.html. See docs/study.md.
"""
