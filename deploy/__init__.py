"""Where pipelines run: on this machine under kfp.local (:mod:`deploy.local`), and on a
Kubernetes cluster: the readiness check (:mod:`deploy.cluster`) and the submission to
Kubeflow Pipelines (:mod:`deploy.submit`). Above the pipelines, below the CLI."""
