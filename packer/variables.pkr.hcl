# Every input of the factory template, typed and described. `factory render` writes the
# values for one task into factory.auto.pkrvars.hcl beside this file; nothing else in
# this folder changes from one task to the next.

variable "task" {
  type        = string
  description = "The task name (the spec file's stem): names the AMI and tags everything."
}

variable "region" {
  type        = string
  description = "The AWS region to bake in."
}

variable "base_ami" {
  type        = string
  description = "The exact base AMI id, resolved by factory from the ECS-optimized SSM parameter or pinned in the spec."
}

variable "instance_type" {
  type        = string
  description = "The builder instance type (at least 4 GiB: Docker, the ECS agent and a conda solve): t3.medium for x86_64, t4g.medium for arm64 unless factory.yaml's builder.instance_types says otherwise."
}

variable "ssh_username" {
  type        = string
  description = "The user Packer and Ansible log in as (ec2-user on the ECS-optimized AMIs)."
}

variable "ssh_interface" {
  type        = string
  default     = "public_ip"
  description = "How Packer reaches the builder: public_ip, private_ip or session_manager (no inbound SSH at all)."
}

variable "builder_cidrs" {
  type        = list(string)
  description = "The only addresses the builder's temporary security group admits: the caller's own address as a /32."

  validation {
    condition     = length(var.builder_cidrs) > 0 && length([for c in var.builder_cidrs : c if split("/", c)[1] < (length(split(":", c)) > 1 ? 48 : 16)]) == 0
    error_message = "The builder_cidrs must list narrow ranges (a /32 of your own address); IPv4 ranges wider than /16 and IPv6 ranges wider than /48, such as the whole internet, are refused."
  }
}

variable "associate_public_ip" {
  type        = string
  default     = ""
  description = "\"true\" or \"false\": whether the builder gets a public address; empty for the subnet's own setting (the default VPC's gives one)."

  validation {
    condition     = contains(["", "true", "false"], var.associate_public_ip)
    error_message = "The associate_public_ip must be \"true\", \"false\" or empty."
  }
}

variable "iam_instance_profile" {
  type        = string
  default     = ""
  description = "An instance profile for the builder (needed with ssh_interface = session_manager); empty for none."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "The subnet to launch the builder in (factory.yaml's builder.subnet, else the first of batch.subnets); empty for the default VPC's choice."
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "The KMS key that encrypts the AMI's snapshots; empty for the account's default EBS key."
}

variable "block_devices" {
  type = list(object({
    device_name = string
    volume_gib  = number
  }))
  description = "The builder's EBS volumes, kept in the AMI: the sized volume (spec image.volume = ami) or a small root (launch-template mode)."
}

variable "tags" {
  type        = map(string)
  description = "The factory:* tags for the builder instance, the AMI and its snapshots (Name is added here)."
}

variable "ssh_timeout" {
  type        = string
  default     = "10m"
  description = "How long Packer waits for SSH on the builder."
}

# Where the bake runs: real AWS by default, the local cloud when these are set.

variable "custom_endpoint_ec2" {
  type        = string
  default     = ""
  description = "An EC2 endpoint other than AWS's (the local cloud's moto server); empty for AWS."
}

variable "skip_region_validation" {
  type        = bool
  default     = false
  description = "Skip Packer's check of the region name (local cloud only)."
}

variable "skip_credential_validation" {
  type        = bool
  default     = false
  description = "Skip Packer's STS credential check (local cloud only)."
}

variable "skip_metadata_api_check" {
  type        = bool
  default     = false
  description = "Skip the EC2 metadata API check (local cloud only)."
}

variable "ssh_host" {
  type        = string
  default     = ""
  description = "Reach the builder at this address instead of the instance's (local cloud only)."
}

variable "ssh_port" {
  type        = number
  default     = 22
  description = "The builder's SSH port."
}

variable "ssh_keypair_name" {
  type        = string
  default     = ""
  description = "An existing EC2 key pair for the builder; empty for a temporary one."
}

variable "ssh_private_key_file" {
  type        = string
  default     = ""
  description = "The private key of ssh_keypair_name; empty with a temporary key pair."
}

# What the Ansible roles bake.

variable "ansible_python_interpreter" {
  type        = string
  default     = "/usr/bin/python3"
  description = "The builder's Python for Ansible, given explicitly: the family's system Python (/usr/bin/python3 on AL2023 and AL2, /usr/bin/python2.7 on the legacy AL1)."
}

variable "ansible_become" {
  type        = bool
  default     = true
  description = "Run the roles with sudo (false when ssh_username is already root)."
}

variable "family" {
  type        = string
  default     = "al2023"
  description = "The base AMI's family (al2023, al2, al1): its package manager and the packages the roles install."
}

variable "docker_storage_driver" {
  type        = string
  default     = "auto"
  description = "Docker's storage driver: auto (read from docker info), overlay2 or devicemapper."
}

variable "volume_gib" {
  type        = number
  description = "The size in GiB of the builder's sized device (the task's volume when the AMI carries it, else the small root): what Docker's storage must sit on."
}

variable "docker_basesize_gib" {
  type        = number
  description = "devicemapper only: the per-container base device size in GiB (dm.basesize)."
}

variable "docker_data_root" {
  type        = string
  default     = "/var/lib/docker"
  description = "overlay2 only: Docker's data root, on the sized volume."
}

variable "awscli_prefix" {
  type        = string
  description = "Where Miniconda and the AWS CLI go; Nextflow's aws.batch.cliPath is <prefix>/bin/aws."
}

variable "miniconda_installer_url" {
  type        = string
  description = "The pinned Miniconda installer for the builder's architecture."
}

variable "miniconda_installer_sha256" {
  type        = string
  description = "The installer's sha256; the download is refused when it differs."

  validation {
    condition     = length(var.miniconda_installer_sha256) == 64 && length(regex_replace(var.miniconda_installer_sha256, "[0-9a-f]", "")) == 0
    error_message = "The miniconda_installer_sha256 must be 64 lowercase hex digits."
  }
}

variable "bake_check_image" {
  type        = string
  default     = ""
  description = "The container image the bake check starts (as AWS Batch would); empty to import an empty image and mount the host's C library into it."
}

variable "accelerator" {
  type        = string
  default     = "none"
  description = "image.accelerator: nvidia bakes on the family's ECS GPU-optimized AMI and runs gpu_stack (locks) and gpu_check (the stack proved whole)."
}

variable "grow_enabled" {
  type        = bool
  default     = false
  description = "storage.grow: install the grow agent and the boot unit that makes Docker's data volume a pool."
}

variable "grow_max_gib" {
  type        = number
  default     = 0
  description = "storage.grow.max_gib: the most Docker's storage on one instance may grow to, in GiB."
}

variable "grow_volume_type" {
  type        = string
  default     = "gp3"
  description = "storage.grow.volume_type: the EBS type of every volume the agent adds."
}

variable "instance_store_enabled" {
  type        = bool
  default     = false
  description = "storage.instance_store: docker: install the boot unit that makes the instance's NVMe instance store Docker's data root."
}

variable "task_images" {
  type        = list(string)
  default     = []
  description = "The task's own container images (the spec's nextflow.containers): the AWS CLI at cliPath must run in each with the image's own C library (glibc 2.17 or newer), as Nextflow's staging runs it."
}
