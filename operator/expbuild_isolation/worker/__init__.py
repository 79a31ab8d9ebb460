"""Running tasks on one machine: worker configuration, the executor chain, local runs, the REAPI worker."""
