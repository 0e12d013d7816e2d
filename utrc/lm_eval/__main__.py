"""`python -m utrc.lm_eval ARGS`: lm-eval's command line with the `utrc` model registered."""

from utrc.lm_eval import main

if __name__ == "__main__":
    main()
