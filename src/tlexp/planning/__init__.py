"""The labelling plan: a learning curve measured on nested subsets and its fit (`curve`), and which unlabelled
images would teach the most (`pool`). `python -m tlexp.plan` (plan.py) runs both."""
