"""``python -m _corral_child [module]`` runs the corral worker runtime."""

from _corral_child._runtime import main

main()
