"""Memory pressure per cgroup.

sampler.py  cgroupfs reads for v1 and v2, the one-second timeline, and the
            10-second pressure windows
"""
