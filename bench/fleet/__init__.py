"""The fleet load benchmark (``python bench/fleet_load.py``), by job.

``children`` the upstream and the load generator (the hidden ``--upstream``/``--load``
modes), ``procfs`` CPU accounting from /proc, ``stores`` the PostgreSQL database and row
counts, ``sample`` one run's figures, ``run`` one run of one configuration, ``summary``
the criterion, medians, verdict and tables, ``cli`` the command line.
"""
