"""What every layer may use: the one door for host reads (:mod:`~streammas.backend.hostsync`) and the few
torch internals the project relies on, behind one small module (:mod:`~streammas.backend.compat`)."""
