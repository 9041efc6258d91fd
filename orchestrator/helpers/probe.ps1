<#
.SYNOPSIS
    keyfleet probe helper (keyfleet doctor): reports what this server offers, changes nothing.
.DESCRIPTION
    Run by the keyfleet bootstrap with -Params (tool_path). Reports the computer name, whether the
    WinRM user is a local administrator, the SCSM role and version found in the registry, where
    SecureStorageBackup.exe is (tool_path, else known install locations) and its file version,
    the free space of the temporary folder, and the PowerShell version. Needs no secret.
#>
param(
    [Parameter(Mandatory = $true)] [psobject] $Params,
    [Security.SecureString] $Secret  # the bootstrap passes it to every helper; the probe needs none
)
Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$HelperVersion = '1.0.0'
$SetupKey = 'HKLM:\SOFTWARE\Microsoft\System Center\2010\Service Manager\Setup'
$SdkServiceKey = 'HKLM:\SOFTWARE\Microsoft\System Center\2010\Common\SDK Service'
$UninstallEntries = 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall\*'
$KnownToolPaths = @(
    'C:\Program Files\Microsoft System Center\Service Manager\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center\Service Manager 2022\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center\Service Manager 2019\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center\Service Manager 2016\Tools\SecureStorageBackup\SecureStorageBackup.exe'
    'C:\Program Files\Microsoft System Center 2012 R2\Service Manager\Tools\SecureStorageBackup\SecureStorageBackup.exe'
)

function Get-Param([string] $Name) {
    $property = $Params.PSObject.Properties[$Name]
    if ($null -eq $property) { return $null }
    return $property.Value
}

function Test-Administrator {
    $principal = New-Object Security.Principal.WindowsPrincipal ([Security.Principal.WindowsIdentity]::GetCurrent())
    return $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
}

function Get-RegistryValue([string] $Path, [string] $Name) {
    $item = Get-ItemProperty -LiteralPath $Path -ErrorAction SilentlyContinue
    if ($null -eq $item -or $null -eq $item.PSObject.Properties[$Name]) { return $null }
    return $item.$Name
}

function Get-ScsmRole {
    switch (Get-RegistryValue $SdkServiceKey 'SDK Service Type') {
        1 { return 'management_server' }
        2 { return 'dw_management_server' }
    }
    if ($null -ne (Get-RegistryValue $SetupKey 'PortalVirtualDirectory')) { return 'self_service_portal' }
    return $null
}

function Get-ScsmVersion {
    $best = $null
    foreach ($entry in @(Get-ItemProperty -Path $UninstallEntries -ErrorAction SilentlyContinue)) {
        $properties = $entry.PSObject.Properties
        if ($null -eq $properties['DisplayName'] -or $null -eq $properties['DisplayVersion']) { continue }
        if ([string]$entry.DisplayName -notlike '*Service Manager*') { continue }
        $parsed = $null
        if ([version]::TryParse([string]$entry.DisplayVersion, [ref]$parsed) -and ($null -eq $best -or $parsed -gt $best)) {
            $best = $parsed
        }
    }
    if ($null -eq $best) { return $null }
    return $best.ToString()
}

function Find-Tool {
    $configured = Get-Param 'tool_path'
    if ($configured) {
        if (Test-Path -LiteralPath $configured -PathType Leaf) { return [string]$configured }
        return $null
    }
    $candidates = @()
    $installDirectory = Get-RegistryValue $SetupKey 'InstallDirectory'
    if ($installDirectory) { $candidates += Join-Path $installDirectory 'Tools\SecureStorageBackup\SecureStorageBackup.exe' }
    foreach ($candidate in $candidates + $KnownToolPaths) {
        if (Test-Path -LiteralPath $candidate -PathType Leaf) { return $candidate }
    }
    return $null
}

$tool = Find-Tool
$toolVersion = $null
if ($tool) { $toolVersion = (Get-Item -LiteralPath $tool).VersionInfo.FileVersion }
$temp = [IO.Path]::GetTempPath()
$drive = New-Object IO.DriveInfo ([IO.Path]::GetPathRoot($temp))
return @{
    computer_name      = $env:COMPUTERNAME
    admin              = Test-Administrator
    role               = Get-ScsmRole
    version            = Get-ScsmVersion
    tool_path          = $tool
    tool_version       = $toolVersion
    temp_path          = $temp
    temp_free_bytes    = $drive.AvailableFreeSpace
    powershell_version = $PSVersionTable.PSVersion.ToString()
    helper_version     = $HelperVersion
}
