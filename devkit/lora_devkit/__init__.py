"""Local stand-ins for what cannot run on one machine (a kube-apiserver, the kubelet and Job
controller, S3), tiny random-init models, the demo and the benchmarks. Development only."""
