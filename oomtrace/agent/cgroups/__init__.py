"""The host's memory cgroups and what runs in them, known before anything dies.

hierarchy.py          where the hierarchy is mounted, its version, memcg paths, the limit hit
names.py              what a cgroup path says: container runtime, container id, pod, unit
container_runtimes.py container metadata from containerd, CRI-O, Docker, runc state
workloads.py          which workload each memory cgroup holds, kept current
"""
