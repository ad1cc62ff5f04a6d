"""The tools on top of the learner and the service: ``streammas demo``, ``inspect``, ``evaluate`` and ``bench``."""
