# One amazon-ebs source and one build: an ECS-optimized base AMI, the two roles that
# size Docker's storage and install the AWS CLI, a container check that proves both, the
# generalize role that runs last (no host keys, authorized keys, machine id or agent
# state in the AMI; it ends SSH, so nothing may log in after it: no
# ssh_clear_authorized_keys), and the manifest that names the AMI. The values come from
# factory.auto.pkrvars.hcl.
#
# Lines between "factory:modern-packer begin" and "end" need Packer 1.7 or newer
# (plugins, IMDSv2). `factory render` keeps them for such a Packer and leaves them out
# for an older one (Debian's 1.6.6), which cannot parse them.

# factory:modern-packer begin
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    # imds_support on amazon-ebs arrived in 1.2.2; Packer 1.8.6 to 1.9 bundle 1.2.1,
    # which a machine may already have, so `packer init` must install a newer one.
    amazon = {
      version = ">= 1.2.2"
      source  = "github.com/hashicorp/amazon"
    }
    ansible = {
      version = ">= 1.1.0"
      source  = "github.com/hashicorp/ansible"
    }
  }
}
# factory:modern-packer end

locals {
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
  name      = "factory-${var.task}-${local.timestamp}"
  tags      = merge(var.tags, { Name = local.name })

  ansible_vars = {
    ansible_python_interpreter          = var.ansible_python_interpreter
    factory_become                      = var.ansible_become
    factory_family                      = var.family
    docker_storage_driver               = var.docker_storage_driver
    docker_storage_volume_gib           = var.volume_gib
    docker_storage_basesize_gib         = var.docker_basesize_gib
    docker_storage_data_root            = var.docker_data_root
    miniconda_awscli_prefix             = var.awscli_prefix
    miniconda_awscli_installer_url      = var.miniconda_installer_url
    miniconda_awscli_installer_checksum = "sha256:${var.miniconda_installer_sha256}"
    bake_check_image                    = var.bake_check_image
    bake_check_task_images              = var.task_images
    bake_check_prefix                   = var.awscli_prefix
    bake_check_min_gib                  = min(var.volume_gib, var.docker_basesize_gib)
    bake_check_report_dest              = "${abspath(path.root)}/bake-check.json"
    gpu_stack_enabled                   = var.accelerator == "nvidia"
    grow_agent_enabled                  = var.grow_enabled
    grow_agent_task                     = var.task
    grow_agent_max_gib                  = var.grow_max_gib
    grow_agent_volume_type              = var.grow_volume_type
    grow_agent_mountpoint               = var.docker_data_root
    grow_agent_python                   = "${var.awscli_prefix}/bin/python"
    instance_store_enabled              = var.instance_store_enabled
    instance_store_mountpoint           = var.docker_data_root
    image_manifest_awscli_prefix        = var.awscli_prefix
    image_manifest_gpu                  = var.accelerator == "nvidia"
    image_manifest_dest                 = "${abspath(path.root)}/image-manifest.json"
    image_manifest_labels = {
      task       = var.task
      base_ami   = var.base_ami
      image_hash = lookup(var.tags, "factory:image-hash", "")
    }
  }
}

source "amazon-ebs" "factory" {
  region        = var.region
  source_ami    = var.base_ami
  instance_type = var.instance_type
  ami_name      = local.name
  subnet_id     = var.subnet_id
  # null (unset) leaves the subnet's own setting
  associate_public_ip_address = var.associate_public_ip == "" ? null : var.associate_public_ip == "true"

  ami_description   = "factory image for task ${var.task}, from ${var.base_ami}"
  shutdown_behavior = "terminate"
  encrypt_boot      = true
  kms_key_id        = var.kms_key_id

  ssh_username                          = var.ssh_username
  ssh_interface                         = var.ssh_interface
  ssh_timeout                           = var.ssh_timeout
  ssh_host                              = var.ssh_host
  ssh_port                              = var.ssh_port
  ssh_keypair_name                      = var.ssh_keypair_name
  ssh_private_key_file                  = var.ssh_private_key_file
  iam_instance_profile                  = var.iam_instance_profile
  temporary_security_group_source_cidrs = var.builder_cidrs

  custom_endpoint_ec2        = var.custom_endpoint_ec2
  skip_region_validation     = var.skip_region_validation
  skip_credential_validation = var.skip_credential_validation
  skip_metadata_api_check    = var.skip_metadata_api_check

  # factory:modern-packer begin
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
  }
  imds_support = "v2.0"
  # factory:modern-packer end

  dynamic "launch_block_device_mappings" {
    for_each = var.block_devices
    content {
      device_name           = launch_block_device_mappings.value.device_name
      volume_size           = launch_block_device_mappings.value.volume_gib
      volume_type           = "gp3"
      iops                  = 3000
      throughput            = 125
      encrypted             = true
      delete_on_termination = true
    }
  }

  run_tags        = local.tags
  run_volume_tags = local.tags
  tags            = local.tags
  snapshot_tags   = local.tags
}

build {
  sources = ["source.amazon-ebs.factory"]

  provisioner "ansible" {
    playbook_file    = "${path.root}/ansible/bake.yml"
    user             = var.ssh_username
    use_proxy        = false
    ansible_env_vars = ["ANSIBLE_CONFIG=${path.root}/ansible/ansible.cfg"]
    extra_arguments  = ["--extra-vars", jsonencode(local.ansible_vars)]
  }

  post-processor "manifest" {
    output     = "${path.root}/manifest.json"
    strip_path = true
    custom_data = {
      task     = var.task
      base_ami = var.base_ami
      region   = var.region
    }
  }
}
