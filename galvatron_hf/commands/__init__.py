"""Sub-commands of the `galvatron-hf` CLI (see galvatron_hf/cli.py)."""

# exit codes every sub-command shares besides 0 (done) and 1 (an unexpected error)
EXIT_BAD_INPUT = 2  # an input is wrong; the message names the fix
EXIT_NO_FIT = 3  # the inputs are valid but no plan fits (search) or no cell of the table fits (fit)
