"""Scaling studies: records of runs at several world sizes, their efficiency tables, plots and comm model."""
