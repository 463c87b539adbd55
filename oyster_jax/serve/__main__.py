import sys

from oyster_jax.serve import main

sys.exit(main())
